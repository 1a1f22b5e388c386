"""`python main.py verify-provenance`: a version's signed provenance statement checked claim by claim against
MLflow (the registered version, its training run's provenance.* tags) and the artifacts (the data snapshot)."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from include.ml.config_file import SigningConfig
from include.ml.exceptions import DeploymentError
from include.ml.training_inputs import TAG_PREFIX, recorded_tags
from include.release.provenance import FROM_TAGS, typed
from include.release.signing import signer_for, trusted_keys
from serving import provenance, store
from serving.signing import PublicKeys, verify_signature

OK, MISMATCH, NOT_RECORDED, NOT_ON_DISK = "ok", "MISMATCH", "not recorded", "not on disk"


@dataclass(frozen=True)
class Claim:
    name: str  # what the statement claims, e.g. data.sha256
    status: str  # ok, MISMATCH, not recorded (neither side has it), not on disk (nothing to hash)
    stated: Any  # the statement's value
    found: Any  # what the check found
    against: str  # where it looked

    def line(self) -> str:
        if self.status == MISMATCH:
            said = f"the statement says {self.stated!r}, {self.against} says {self.found!r}"
        elif self.status == NOT_ON_DISK:
            said = f"{self.stated!r}; {self.against}: not on disk, not checked"
        else:
            said = f"{self.stated!r} ({self.against})"
        return f"  {self.status:<12} {self.name:<22} {said}"


@dataclass(frozen=True)
class ProvenanceReport:
    model_name: str
    version: str
    bundle: str
    claims: list[Claim]

    @property
    def ok(self) -> bool:
        return all(claim.status != MISMATCH for claim in self.claims)

    def summary(self) -> str:
        wrong = [c.name for c in self.claims if c.status == MISMATCH]
        verdict = "holds" if self.ok else f"does NOT hold; mismatched: {', '.join(wrong)}"
        return f"provenance of {self.model_name} version {self.version} {verdict}"

    def table(self) -> str:
        return "\n".join([f"{self.summary()} (bundle {self.bundle})", *(c.line() for c in self.claims)])

    def xcom(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "version": self.version, "ok": self.ok,
                "claims": [asdict(c) for c in self.claims]}


def verify_provenance(model_name: str, version_or_alias: str, store_dir: Path, signing: SigningConfig,
                      artifacts_root: Path) -> ProvenanceReport:
    """Check the version's bundle (from `store_dir`, else exported into a temporary store) and its statement.
    MLflow must already point at the registry (include.ml.tracking.configure)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        mv = client.get_model_version(model_name, version_or_alias) if version_or_alias.isdigit() \
            else client.get_model_version_by_alias(model_name, version_or_alias)
    except MlflowException as exc:
        raise DeploymentError(f"model {model_name!r} has no version or alias {version_or_alias!r}") from exc
    version, trusted = str(mv.version), trusted_keys(signing)
    run_tags = client.get_run(mv.run_id).data.tags
    with tempfile.TemporaryDirectory(prefix="verify-provenance-") as scratch:
        bundle, where = store_dir / version, str(store_dir / version)
        if not bundle.is_dir():
            from include.release.export import export_bundle

            try:
                bundle = export_bundle(model_name, version, Path(scratch), signer_for(signing), trusted)
            except store.BundleError as exc:
                raise DeploymentError(f"cannot export {model_name} version {version}: {exc}") from exc
            where = "exported from MLflow into a temporary store"
        claims = check_bundle(bundle, trusted, model_name, version, mv.run_id, run_tags, artifacts_root)
    return ProvenanceReport(model_name, version, where, claims)


def check_bundle(bundle: Path, trusted: PublicKeys, model_name: str, version: str, run_id: str,
                 run_tags: dict[str, str], artifacts_root: Path) -> list[Claim]:
    """Each claim of the bundle's statement, checked; the first check that fails on the signatures ends the list
    (an unsigned statement's claims mean nothing)."""
    try:
        verify_signature(bundle, trusted)
        store.verify_manifest(bundle)
    except store.BundleError as exc:
        return [Claim("bundle signature", MISMATCH, "signed by a trusted key", str(exc), "the trusted keys")]
    claims = [Claim("bundle signature", OK, "signed by a trusted key", "verified", "MANIFEST.sig, MANIFEST.sha256")]
    if not (bundle / provenance.FILE).is_file():
        return [*claims, Claim("statement", MISMATCH, provenance.FILE, "absent", "the bundle")]
    try:
        statement, keyid = provenance.verify_envelope((bundle / provenance.FILE).read_bytes(), trusted)
    except provenance.ProvenanceError as exc:
        return [*claims, Claim("statement signature", MISMATCH, "signed by a trusted key", str(exc),
                               "the trusted keys")]
    claims.append(Claim("statement signature", OK, f"key {keyid[:16]}...", "verified", "the trusted keys"))
    try:
        provenance.check_subjects(statement, provenance.manifest_digests((bundle / store.MANIFEST).read_bytes()))
        claims.append(Claim("bundle files", OK, f"{len(statement['subject'])} files and their sha256", "equal",
                            "the signed manifest"))
    except provenance.ProvenanceError as exc:
        claims.append(Claim("bundle files", MISMATCH, "the bundle's files and their sha256", str(exc),
                            "the signed manifest"))
    predicate = statement.get("predicate") or {}
    model = predicate.get("model") or {}
    claims += [_compare("model.name", model.get("name"), model_name, "the registry"),
               _compare("model.version", model.get("version"), version, "the registry"),
               _compare("model.run_id", model.get("run_id"), run_id, f"the registry's version {version}")]
    tags = recorded_tags(run_tags)
    for tag, (section, name) in FROM_TAGS.items():
        claims.append(_compare(tag, (predicate.get(section) or {}).get(name), typed(tag, tags.get(tag)),
                               f"MLflow run tag {TAG_PREFIX}{tag}"))
    claims.append(_snapshot(predicate.get("data") or {}, artifacts_root))
    return claims


def _compare(name: str, stated: Any, found: Any, against: str) -> Claim:
    status = NOT_RECORDED if stated is None and found is None else OK if stated == found else MISMATCH
    return Claim(name, status, stated, found, against)


def _snapshot(data: dict[str, Any], artifacts_root: Path) -> Claim:
    """The snapshot file under the artifacts root hashes to the stated sha256 (if it is still there)."""
    path, stated = data.get("snapshot"), data.get("sha256")
    if not path or not stated:
        return Claim("data snapshot file", NOT_RECORDED, stated, None, "the artifacts")
    file = Path(path) if Path(path).is_absolute() else artifacts_root / path
    if not file.is_file():
        return Claim("data snapshot file", NOT_ON_DISK, stated, None, str(file))
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return _compare("data snapshot file", stated, digest.hexdigest(), f"the sha256 of {file}")
