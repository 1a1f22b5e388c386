"""The EC2 host assets in serving/deploy/, run: each test starts bash, shellcheck, systemd-analyze or a child
interpreter (what needs no process: test_deploy_assets_static.py).

- serving/requirements.txt is enough on its own: the app loads a bundle and predicts in a process that can import
  nothing outside that list (so no mlflow, no airflow).
- user-data.sh: bash -n, shellcheck, its helpers, and its refresh command is the SSM document's, flag for flag;
  the release it installs as root is pinned (APP_SHA256, a full git commit) and checked before extraction, pip
  installs with --require-hashes, the bundle-signing public key is required and written for the server.
- prediction-server.service: systemd-analyze verify (when present) and the settings that matter, read back.
- the instance's IAM policy: valid, read-only but for its capture prefix, scoped to the prefix and the API key
  parameter.
- bootstrap.py's secrets file and the settings file read the same through a shell as through systemd.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from hashlib import sha256
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from include.release.command_document import CommandDocument, document_parameters
from include.release.rollout import refresh_command
from serving.s3_uri import parse_s3_uri
from tests.support.assets import (
    DEPLOYER_POLICY,
    INSTANCE_POLICY,
    NGINX_TEMPLATE,
    PUBLISHER_POLICY,
    RELEASE_PREFIX,
    SERVING_REQUIREMENTS,
    UNIT,
    USER_DATA,
    actions,
    allowed,
    check_s3_scope,
    ec2_config,
    pins,
    render_policy,
    requirements,
    statements,
    unit_settings,
)
from tests.support.bundles import GOOD_ROW, make_bundle
from tests.support.pointers import point, pointer_for
from tests.support.project import REPO
from tests.support.signing import public_key_file

pytestmark = pytest.mark.integration


def user_data(*lines: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Source user-data.sh (its main() only runs when executed) and run `lines` with its functions and settings."""
    script = "\n".join([f"source {USER_DATA}", *lines])
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          check=check, timeout=120)


def user_data_setting(name: str) -> str:
    return user_data(f'printf "%s" "${name}"').stdout


BLOCKER = textwrap.dedent('''
    """Only the standard library, serving/ and the distributions of serving/requirements.txt can be imported."""
    import importlib.abc, importlib.machinery, json, os, sys, sysconfig, traceback

    ALLOWED = set(json.loads(os.environ["SERVING_ONLY_ALLOWED"]))
    STDLIB = tuple(os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib"))
    ATTEMPTS = []  # (module, the import chain) for every refused import


    def in_stdlib(top):  # private stdlib modules such as _sysconfigdata_* are not in stdlib_module_names
        spec = importlib.machinery.PathFinder.find_spec(top)
        origin = os.path.realpath(spec.origin) if spec and spec.origin else ""
        return origin.startswith(STDLIB) and "site-packages" not in origin


    class ServingOnly(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in ALLOWED or top in sys.stdlib_module_names or in_stdlib(top):
                return None
            ATTEMPTS.append((name, "".join(traceback.format_stack()[:-1])))
            raise ModuleNotFoundError(f"No module named {name!r} (not in serving/requirements.txt)", name=name)


    sys.meta_path.insert(0, ServingOnly())
    sys.modules["serving_only_attempts"] = ATTEMPTS
''')



PROBE = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    attempts = sys.modules["serving_only_attempts"]
    from serving.app import create_app

    app = create_app({"model_store": Path(sys.argv[1]), "poll_seconds": 0, "public_key": Path(sys.argv[3])})
    response = app.test_client().post("/predict", json=json.loads(sys.argv[2]))
    before = list(attempts)
    try:
        import mlflow  # the check can fail: the blocker must refuse what the serving venv lacks
        mlflow_blocked = False
    except ImportError:
        mlflow_blocked = True
    try:
        import airflow
        airflow_blocked = False
    except ImportError:
        airflow_blocked = True
    print(json.dumps({"status": response.status_code, "body": response.get_json(),
                      "engine": app.extensions["serving"].holder.current.engine.name,
                      "blocked": [name for name, _ in before],
                      "chains": {name: chain for name, chain in before if name.partition(".")[0] in
                                 ("mlflow", "airflow", "include", "great_expectations")},
                      "mlflow_blocked": mlflow_blocked, "airflow_blocked": airflow_blocked,
                      "loaded": sorted({m.partition(".")[0] for m in sys.modules})}))
''')



def test_the_app_loads_a_bundle_and_predicts_with_only_the_serving_requirements(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_bundle(store, "1")  # training needs mlflow: done here, in the full test venv

    point(store, "1")
    top_level = metadata.packages_distributions()
    serving_dists = set(pins(SERVING_REQUIREMENTS))
    allowed = sorted({"serving", "sitecustomize", "serving_only_attempts"} | {
        module for module, dists in top_level.items() if any(canonicalize_name(d) in serving_dists for d in dists)})
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
           "SERVING_ONLY_ALLOWED": json.dumps(allowed), "PYTHONNOUSERSITE": "1"}
    for name in [n for n in env if n.startswith("SERVING_") and n != "SERVING_ONLY_ALLOWED"]:
        del env[name]
    done = subprocess.run([sys.executable, "-c", PROBE, str(store), json.dumps(GOOD_ROW), str(public_key_file())],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mlflow_blocked"] and result["airflow_blocked"], "the blocker does not block"
    assert not result["chains"], "serving imported outside its requirements:\n" + "\n".join(
        f"{name}:\n{chain}" for name, chain in result["chains"].items())
    assert result["status"] == 200, (result["body"], result["blocked"], done.stderr[-3000:])
    assert result["body"]["model"] == {"name": "toy", "version": "1"} and len(result["body"]["predictions"]) == 1
    assert not {"mlflow", "airflow", "include", "great_expectations"} & set(result["loaded"])
    # ONNX Runtime serves the bundle's model.onnx: no converter (skl2onnx, onnx) is on the list, nor needed.
    assert result["engine"] == "onnxruntime", result["blocked"]
    assert not {"skl2onnx", "onnx"} & set(result["loaded"])



# --- user-data.sh ------------------------------------------------------------------------------------------------


def test_user_data_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(USER_DATA)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr



def test_user_data_passes_shellcheck() -> None:
    """A hard requirement: `make test` installs shellcheck (apt) before running the suite."""
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: run `make test`, or `apt-get install -y shellcheck`"
    done = subprocess.run([shellcheck, "--shell=bash", str(USER_DATA)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr



def test_user_data_is_a_cloud_init_script_that_fails_loudly_and_logs() -> None:
    text = USER_DATA.read_text()
    assert text.startswith("#!/bin/bash\n")  # cloud-init runs user-data starting with #! as a script
    assert re.search(r"^set -Eeuo pipefail$", text, re.M)
    assert user_data_setting("LOG_FILE") == "/var/log/mlops-setup.log"
    for name in ("BUCKET", "PREFIX", "MODEL_NAME", "APP_SOURCE", "SERVING_PORT", "API_KEY_PARAMETER"):
        assert re.search(rf"^{name}=", text, re.M), f"{name} is not a setting at the top"
    # The API key only ever comes from Parameter Store: no literal key setting anywhere.
    assert not re.search(r"^\s*(SERVING_)?API_KEY=", text, re.M)



def test_user_data_defaults_match_the_pipeline_config() -> None:
    config = ec2_config()
    ec2 = config.deployment.ec2
    assert user_data_setting("PREFIX") == ec2.s3_prefix.strip("/")
    assert user_data_setting("MODEL_NAME") == config.mlflow.registered_model_name
    port = re.search(r":(\d+)", ec2.instance_url.split("//", 1)[-1])
    assert port and port.group(1) == user_data_setting("SERVING_PORT"), ec2.instance_url
    source = user_data('printf "%s" "s3://${BUCKET}/${PREFIX}/${MODEL_NAME}"').stdout
    bucket = user_data_setting("BUCKET")
    assert source == f"s3://{bucket}/{ec2.s3_prefix.strip('/')}/{config.mlflow.registered_model_name}"



@pytest.mark.parametrize("distro, version, python, packages", [
    ("amzn", "2023", "python3.11", "python3.11 python3.11-pip"),
    ("ubuntu", "22.04", "python3.11", "python3.11 python3.11-venv"),
    ("ubuntu", "24.04", "python3.12", "python3.12 python3.12-venv"),
])
def test_python_per_distribution(distro: str, version: str, python: str, packages: str) -> None:
    assert user_data(f"python_for {distro} {version}").stdout.split() == [python, *packages.split()]



@pytest.mark.parametrize("distro, version", [("amzn", "2"), ("ubuntu", "20.04"), ("debian", "12"), ("", "")])
def test_unsupported_distributions_are_refused(distro: str, version: str) -> None:
    assert user_data(f"python_for '{distro}' '{version}'", check=False).returncode != 0



@pytest.mark.parametrize("source, kind", [
    ("s3://bucket/models/app/r1.tar.gz", "s3"), ("https://example.com/r1.tar.gz", "https"),
    ("https://github.com/org/repo.git", "git"), ("git@github.com:org/repo.git", "git"), ("/srv/app", "local"),
])
def test_app_source_kinds(source: str, kind: str) -> None:
    assert user_data(f"source_kind '{source}'").stdout.strip() == kind



def test_an_unknown_app_source_is_refused() -> None:
    assert user_data("source_kind 'ftp://example.com/app.tar.gz'", check=False).returncode != 0



@pytest.fixture
def no_host_serving_env() -> None:
    if Path("/etc/mlops/serving.env").exists():
        pytest.skip("this host has /etc/mlops/serving.env, which both commands would read")



def _record_python(tmp_path: Path) -> Path:
    stub = tmp_path / "python"
    stub.write_text("#!/bin/bash\n"
                    "printf '%s\\n' \"$(pwd)\" \"$@\" > \"$RECORD\"\n")
    stub.chmod(0o755)
    return stub


def test_user_data_runs_the_deploy_tasks_refresh_command(tmp_path: Path, no_host_serving_env: None) -> None:
    """The same command line reaches `python -m serving` at setup and on every deploy through the mlops-serving
    SSM document (at boot without the manifest digest, which only a deploy knows, and with the signed pointer of the
    CURRENT object)."""
    source, version, digest = "s3://my-bucket/models/wine-quality", "12", "ab" * 32
    token = "eyJwYXlsb2FkIjoi-_=="
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    env = {"MLOPS_PYTHON": str(_record_python(tmp_path)), "MLOPS_APP_DIR": str(app_dir)}
    deploy_record, setup_record, boot_record = tmp_path / "deploy.txt", tmp_path / "setup.txt", tmp_path / "boot.txt"
    rendered = CommandDocument.load().render(document_parameters(refresh_command(source, version, digest,
                                                                                 pointer=token)))
    subprocess.run(["bash", "-c", rendered.script], check=True,
                   env={**os.environ, **env, **rendered.env, "RECORD": str(deploy_record)})
    user_data(f"refresh_model '{source}' '{version}' '{digest}' '{token}'", env={**env, "RECORD": str(setup_record)})
    user_data(f"refresh_model '{source}' '{version}' '' '{token}'", env={**env, "RECORD": str(boot_record)})
    expected = [str(app_dir), "-m", "serving", "refresh", "--source", source, "--version", version]
    assert deploy_record.read_text().splitlines() == expected + ["--manifest-sha256", digest, f"--pointer={token}"]
    assert setup_record.read_text().splitlines() == expected + ["--manifest-sha256", digest, f"--pointer={token}"]
    assert boot_record.read_text().splitlines() == expected + [f"--pointer={token}"]
    spaced = "s3://my bucket/models/wine-quality"  # the document refuses it; user-data, run by root, quotes it
    user_data(f"refresh_model '{spaced}' '{version}'", env={**env, "RECORD": str(boot_record)})
    assert boot_record.read_text().splitlines()[5] == spaced


def test_user_data_refresh_installs_and_activates_a_bundle(tmp_path: Path, no_host_serving_env: None) -> None:
    """The setup's refresh for real: `python -m serving refresh` from a release directory into an empty store."""
    releases, store = tmp_path / "releases", tmp_path / "store"
    make_bundle(releases, "3")
    env = {"MLOPS_PYTHON": sys.executable, "MLOPS_APP_DIR": str(REPO), "SERVING_MODEL_STORE": str(store),
           "SERVING_URL": "", "SERVING_PUBLIC_KEY": str(public_key_file())}
    pointer = pointer_for(releases, "3")
    done = user_data(f"refresh_model '{releases}' 3 '' '{pointer.token}'", env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "active"
    assert (store / "CURRENT").read_bytes() == pointer.envelope and (store / "3" / "MANIFEST.sha256").is_file()



@pytest.mark.skipif(os.geteuid() != 0, reason="fetch_app makes the code root-owned: needs root")
def test_fetch_app_from_a_release_tarball_and_again(tmp_path: Path) -> None:
    tarball = tmp_path / "release.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(REPO / "serving", arcname="serving", filter=lambda info: None if "__pycache__" in info.name else info)
    root = tmp_path / "opt"
    root.mkdir()
    settings = f"MLOPS_ROOT={root}; APP_DIR={root}/app; APP_SOURCE={tarball}; APP_SHA256={file_sha256(tarball)}"
    for _ in range(2):  # idempotent: a second run replaces the code with the same release
        done = user_data(settings, "fetch_app local", check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        app = root / "app"
        assert (app / "serving" / "deploy" / "prediction-server.service").is_file()
        assert (app / "serving" / "requirements.txt").read_text() == SERVING_REQUIREMENTS.read_text()
        assert sorted(p.name for p in root.iterdir()) == ["app"]  # no .new/.old/download left behind
        assert (app / ".release").read_text().startswith(f"{tarball} sha256:{file_sha256(tarball)} ")
    broken = tmp_path / "broken.tar.gz"
    with tarfile.open(broken, "w:gz") as tar:
        tar.add(REPO / "serving" / "gunicorn.conf.py", arcname="serving/gunicorn.conf.py")
    done = user_data(f"MLOPS_ROOT={root}; APP_DIR={root}/app; APP_SOURCE={broken}; APP_SHA256={file_sha256(broken)}",
                     "fetch_app local", check=False)
    assert done.returncode != 0 and "has no serving/requirements.txt" in done.stderr
    assert (root / "app" / "serving" / "requirements.txt").is_file()  # the working release is untouched



def file_sha256(path: Path) -> str:
    return sha256(path.read_bytes()).hexdigest()


def release_tarball(path: Path, extra: dict[str, str] | None = None) -> Path:
    """A release as `git archive` makes it: serving/ at the top level (plus `extra` files)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(REPO / "serving", arcname="serving", filter=lambda info: None if "__pycache__" in info.name else info)
        for name, text in (extra or {}).items():
            source = path.with_name(f".{Path(name).name}")
            source.write_text(text)
            tar.add(source, arcname=name)
    return path


def _key_pair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return public, private


KEY_PAIR = _key_pair()


def public_key_pem() -> str:
    return KEY_PAIR[0]


def test_a_release_whose_sha256_differs_is_refused_before_anything_is_extracted(tmp_path: Path) -> None:
    """APP_SHA256 pins the release: a tarball with other bytes (here one file added after pinning) is refused
    with a clear line, nothing of it is extracted, and an installed release stays as it was."""
    tarball = release_tarball(tmp_path / "release.tar.gz")
    pinned = file_sha256(tarball)
    release_tarball(tarball, extra={"serving/evil.py": "import os; os.system('id')\n"})  # replaced after pinning
    root = tmp_path / "opt"
    root.mkdir()
    settings = f"MLOPS_ROOT={root}; APP_DIR={root}/app; APP_SOURCE={tarball}; APP_SHA256={pinned}"
    done = user_data(settings, "fetch_app local", check=False)
    assert done.returncode != 0
    assert (f"APP_SHA256 mismatch: {tarball} has sha256 {file_sha256(tarball)} but the instance configuration "
            f"pins {pinned}; refusing it") in done.stderr
    assert list(root.iterdir()) == []  # no app, no app.new, no downloaded archive
    (root / "app").mkdir()  # an installed release is left alone
    (root / "app" / "marker").write_text("the release that works")
    done = user_data(settings, "fetch_app local", check=False)
    assert done.returncode != 0 and "APP_SHA256 mismatch" in done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["app"]
    assert [p.name for p in (root / "app").iterdir()] == ["marker"]


@pytest.mark.parametrize("kind, source", [("s3", "s3://my-mlops-bucket/releases/app/r1.tar.gz"),
                                          ("https", "https://example.com/r1.tar.gz"), ("local", "/srv/r1.tar.gz")])
@pytest.mark.parametrize("pin", ["", "0123abcd", "G" * 64, "A" * 63])
def test_an_unpinned_release_is_refused(tmp_path: Path, kind: str, source: str, pin: str) -> None:
    done = user_data(f"MLOPS_ROOT={tmp_path}; APP_DIR={tmp_path}/app; APP_SOURCE={source}; APP_SHA256='{pin}'",
                     f"fetch_app {kind}", check=False)
    assert done.returncode != 0
    assert "APP_SHA256 must be the sha256" in done.stderr and "not pinned" in done.stderr
    assert list(tmp_path.iterdir()) == []  # refused before fetching anything


@pytest.mark.parametrize("ref", ["main", "v1.4.0", "0123abc", "", "HEAD", "0123456789abcdef0123456789abcdef0123456X",
                                 "0123456789ABCDEF0123456789ABCDEF01234567", "origin/main"])
def test_a_git_release_must_name_a_full_commit(tmp_path: Path, ref: str) -> None:
    """A branch or tag can be moved by whoever can push: only a full commit id pins what instances run."""
    done = user_data(f"MLOPS_ROOT={tmp_path}; APP_DIR={tmp_path}/app; APP_SOURCE=https://github.com/org/repo.git; "
                     f"APP_REF='{ref}'", "fetch_app git", check=False)
    assert done.returncode != 0
    assert "APP_REF must be the full 40-hex commit id" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing cloned


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="fetch_app makes the code root-owned: needs root")
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_git_release_is_the_pinned_commit_even_after_the_branch_moves(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "serving", repo / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    _git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "VERSION").write_text("pinned\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "--quiet", "-m", "the release")
    pinned = _git(repo, "rev-parse", "HEAD")
    (repo / "VERSION").write_text("pushed later\n")  # the branch moves on
    _git(repo, "commit", "--quiet", "-am", "later")
    root = tmp_path / "opt"
    root.mkdir()
    done = user_data(f"MLOPS_ROOT={root}; APP_DIR={root}/app; APP_SOURCE={repo}; APP_REF={pinned}", "fetch_app git",
                     check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    app = root / "app"
    assert (app / "VERSION").read_text() == "pinned\n"
    assert (app / ".release").read_text().startswith(f"{repo} commit:{pinned} ")
    assert not (app / ".git").exists() and sorted(p.name for p in root.iterdir()) == ["app"]


def test_pip_installs_the_serving_requirements_with_require_hashes(tmp_path: Path) -> None:
    """setup_venv's pip: exact pins, wheels only, and every file checked against the file's sha256 lines."""
    record = tmp_path / "pip.txt"
    python = tmp_path / "python3.11"  # the system Python: `-c` prints a version, `-m venv` a venv whose pip records
    python.write_text(textwrap.dedent("""\
        #!/bin/bash
        if [ "$1" = -c ]; then echo 3.11; exit 0; fi
        if [ "$1 $2" = "-m venv" ]; then
            mkdir -p "$3/bin"
            printf '%s\\n' '#!/bin/bash' 'echo "pip $*" >> "$PIP_RECORD"' > "$3/bin/pip"
            printf '%s\\n' '#!/bin/bash' 'exit 0' > "$3/bin/python"
            chmod +x "$3/bin/pip" "$3/bin/python"
        fi
        """))
    python.chmod(0o755)
    app = tmp_path / "app"
    (app / "serving").mkdir(parents=True)
    shutil.copy(SERVING_REQUIREMENTS, app / "serving" / "requirements.txt")
    done = user_data(f"VENV={tmp_path}/venv; APP_DIR={app}; SERVICE=mlops-test-no-such-unit", f"setup_venv {python}",
                     env={"PIP_RECORD": str(record)}, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    install, check = record.read_text().splitlines()
    args = install.split()
    assert args[:2] == ["pip", "install"]
    assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(args)
    assert args[-2:] == ["-r", f"{app}/serving/requirements.txt"]
    assert check.split()[:2] == ["pip", "check"]
    found = requirements(app / "serving" / "requirements.txt")  # which --require-hashes accepts: all hashed
    assert found and all(hashes for _, hashes in found.values())


@pytest.mark.parametrize("key, error", [
    ("", "SIGNING_PUBLIC_KEY is empty"),
    ("  \n ", "SIGNING_PUBLIC_KEY is empty"),
    (KEY_PAIR[1], "holds a private key"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey user@host", "is not PEM"),
    (KEY_PAIR[0].replace("-----END PUBLIC KEY-----", ""), "is not a PEM public key"),
])
def test_the_bundle_signing_key_is_required(tmp_path: Path, key: str, error: str) -> None:
    """The server refuses bundles it cannot verify, so an instance without the key is refused at setup."""
    etc = tmp_path / "etc"
    etc.mkdir()
    done = user_data(f"ETC_DIR={etc}; SIGNING_KEY_FILE={etc}/bundle-signing.pub; BIN_DIR={tmp_path}; "
                     f"CLI={tmp_path}/cli", 'SIGNING_PUBLIC_KEY="$TEST_KEY"; write_config', env={"TEST_KEY": key},
                     check=False)
    assert done.returncode != 0 and error in done.stderr, done.stderr
    assert list(etc.iterdir()) == []  # nothing written


def test_the_signing_key_setting_keeps_several_keys_and_tolerates_indentation(tmp_path: Path) -> None:
    other = _key_pair()[0]
    pasted = "\n".join("    " + line for line in (public_key_pem() + other).splitlines()) + "\n"
    done = user_data('SIGNING_PUBLIC_KEY="$TEST_KEY"; signing_key_pem', env={"TEST_KEY": pasted})
    assert done.stdout == public_key_pem() + other
    from serving.signing import load_public_keys  # the server's reader takes what the script writes

    (tmp_path / "keys.pub").write_text(done.stdout)
    assert len(load_public_keys(tmp_path / "keys.pub")) == 2


def _valid_settings() -> str:
    return (f'SIGNING_PUBLIC_KEY="$TEST_KEY"; APP_SHA256={"a" * 64}; '
            f"APP_SOURCE=s3://my-mlops-bucket/{RELEASE_PREFIX}/app-1.tar.gz")


@pytest.mark.parametrize("change, error", [
    ("SERVING_BACKEND_PORT=8000", "must differ"),
    ("SERVING_PORT=80000", "SERVING_PORT must be a TCP port"),
    ("APP_SOURCE=s3://my-mlops-bucket/models/app/release.tar.gz", "where the deploy role writes"),
    ("TLS_CERTIFICATE=/nonexistent/server.crt TLS_CERTIFICATE_KEY=/nonexistent/server.key", "does not exist"),
    ("TLS_CERTIFICATE='/etc/x.crt; evil' TLS_CERTIFICATE_KEY=/etc/x.key", "must both be absolute paths"),
    ("TRUSTED_PROXY_CIDR='10.0.0.0/16; allow all'", "TRUSTED_PROXY_CIDR must be"),
    ("CAPTURE_SAMPLE=1.5", "CAPTURE_SAMPLE must be a fraction from 0"),
    ("CAPTURE_SAMPLE='0.5; rm -rf /'", "CAPTURE_SAMPLE must be a fraction from 0"),
])
def test_settings_are_checked_before_anything_is_installed(tmp_path: Path, change: str, error: str) -> None:
    good = user_data(_valid_settings(), "check_settings s3", env={"TEST_KEY": public_key_pem()}, check=False)
    assert good.returncode == 0, good.stderr
    done = user_data(_valid_settings(), change, "check_settings s3", env={"TEST_KEY": public_key_pem()},
                     check=False)
    assert done.returncode != 0 and error in done.stderr, done.stderr


def test_the_release_location_is_the_publishers_and_readable_by_instances() -> None:
    """The default APP_SOURCE is under the release prefix: the publisher writes it, instances read it, and the
    deploy role (which writes model bundles) cannot."""
    assert user_data_setting("RELEASE_PREFIX") == RELEASE_PREFIX
    bucket = user_data_setting("BUCKET")
    source = user_data_setting("APP_SOURCE")
    assert source.startswith(f"s3://{bucket}/{RELEASE_PREFIX}/") and source.endswith(".tar.gz")
    assert user_data_setting("APP_SHA256") == "" and user_data_setting("APP_REF") == ""  # refused until pinned
    values = {"BUCKET": bucket, "PREFIX": user_data_setting("PREFIX"), "MODEL_NAME": user_data_setting("MODEL_NAME"),
              "REGION": "us-east-1", "ACCOUNT_ID": "123456789012", "RELEASE_PUBLISHER_ROLE": "release-publisher",
              "KMS_KEY_ID": "1234abcd-12ab-34cd-56ef-1234567890ab"}
    s3 = parse_s3_uri(source)
    arn = f"arn:aws:s3:::{s3.bucket}/{s3.key}"
    assert allowed([render_policy(INSTANCE_POLICY, values)], "s3:GetObject", arn)
    assert allowed([render_policy(PUBLISHER_POLICY, values)], "s3:PutObject", arn)
    assert not allowed([render_policy(DEPLOYER_POLICY, values)], "s3:PutObject", arn)


def render_site(output: Path, listen: str = "8000", backend: str = "127.0.0.1:8001", **settings: str) -> str:
    """The nginx site as user-data.sh renders it from serving/deploy/nginx-prediction-server.conf."""
    assignments = " ".join(f"{name}='{value}'" for name, value in settings.items())
    user_data(f"{assignments} render_nginx_site {NGINX_TEMPLATE} {output} {listen} {backend}".strip())
    return output.read_text()


def test_the_nginx_site_is_rendered_plain_or_with_tls(tmp_path: Path) -> None:
    plain = render_site(tmp_path / "plain.conf")
    tls = render_site(tmp_path / "tls.conf", listen="443", TLS_CERTIFICATE="/etc/mlops/tls/server.crt",
                      TLS_CERTIFICATE_KEY="/etc/mlops/tls/server.key", TRUSTED_PROXY_CIDR="10.0.0.0/16")
    for text in (plain, tls):
        assert not re.search(r"^\s*#(TLS|PLAIN|REDIRECT|REAL_IP)# ", text, re.M)
        assert not re.search(r"^[^#]*@[A-Z_]+@", text, re.M), text
        assert "server 127.0.0.1:8001;" in text and "proxy_pass http://prediction_server;" in text
    assert re.search(r"^\s*listen 8000;$", plain, re.M) and "ssl" not in plain and "return 301" not in plain
    assert "set_real_ip_from" not in plain
    assert re.search(r"^\s*listen 443 ssl;$", tls, re.M)
    assert "ssl_certificate /etc/mlops/tls/server.crt;" in tls
    assert "ssl_certificate_key /etc/mlops/tls/server.key;" in tls
    assert re.search(r"^\s*listen 80;$", tls, re.M) and "return 301 https://$host$request_uri;" in tls
    assert "set_real_ip_from 10.0.0.0/16;" in tls
    other_port = render_site(tmp_path / "tls8443.conf", listen="8443", TLS_CERTIFICATE="/c.crt",
                             TLS_CERTIFICATE_KEY="/c.key", TLS_REDIRECT_PORT="")
    assert "return 301" not in other_port and "listen 8443 ssl;" in other_port


# --- prediction-server.service ----------------------------------------------------------------------------------


def test_unit_settings() -> None:
    unit = unit_settings(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["User"] == "mlops" == user_data_setting("SERVICE_USER")
    assert service["WorkingDirectory"] == "/opt/mlops/app" == user_data_setting("APP_DIR")
    assert "/etc/mlops/serving.env" in unit["Service"]["EnvironmentFile"]
    assert service["ExecStart"] == f"{user_data_setting('VENV')}/bin/gunicorn -c serving/gunicorn.conf.py"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["Type"] == "notify"  # gunicorn's arbiter sends READY=1
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality"):
        assert service.get(key) == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    # Writable: only the runtime directory holding the Prometheus files and the capture directory. The store
    # stays read-only here.
    assert "PROMETHEUS_MULTIPROC_DIR=/run/prediction-server/metrics" in unit["Service"]["Environment"]
    assert service["RuntimeDirectory"] == "prediction-server"
    assert f"/var/lib/{service['StateDirectory']}" == user_data_setting("CAPTURE_DIR")
    assert "ReadWritePaths" not in service
    assert f"SERVING_MODEL_STORE={user_data_setting('MODEL_STORE')}" in unit["Service"]["Environment"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]



@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every directive known and well-formed; ExecStart points at a stand-in (verify checks it is executable)."""
    gunicorn = tmp_path / "gunicorn"
    gunicorn.write_text("#!/bin/sh\n")
    gunicorn.chmod(0o755)
    unit = tmp_path / "prediction-server.service"
    unit.write_text(UNIT.read_text().replace("/opt/mlops/venv/bin/gunicorn", str(gunicorn)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                              text=True, cwd=tmp_path)
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    if security.returncode != 0 or not exposure:
        pytest.skip(f"this systemd-analyze has no offline security report: {security.stderr.strip()[:200]}")
    assert float(exposure.group(1)) <= 2.0, security.stdout[-3000:]



def test_systemd_analyze_verify_catches_a_bad_directive(tmp_path: Path) -> None:
    """The check above can fail: a misspelt hardening key is reported (exit code 0, so output is what counts)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "bad.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nProtectSystm=strict\n")
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert "ProtectSystm" in done.stdout + done.stderr



# --- IAM policies -----------------------------------------------------------------------------------------------


def test_instance_policy_is_read_only_but_for_its_capture_prefix_and_scoped() -> None:
    found = statements(INSTANCE_POLICY)
    s3 = actions(found, "s3")
    assert s3 == {"s3:GetObject", "s3:ListBucket", "s3:PutObject"}
    assert not any(re.match(r"s3:(Delete|Create|Restore|Replicate|Abort)", a) for a in s3)
    assert [s["Resource"] for s in found if "s3:PutObject" in s["Action"]] == [
        ["arn:aws:s3:::BUCKET/PREFIX/capture/MODEL_NAME/*"]]  # where capture-ship.service uploads, nothing else
    check_s3_scope(found, ["arn:aws:s3:::BUCKET/PREFIX/MODEL_NAME/*", f"arn:aws:s3:::BUCKET/{RELEASE_PREFIX}/*",
                           "arn:aws:s3:::BUCKET/PREFIX/capture/MODEL_NAME/*"], ["PREFIX/MODEL_NAME/*"])
    assert actions(found, "ssm") == {"ssm:GetParameter"}
    ssm_resources = [r for s in found if "ssm:GetParameter" in s["Action"] for r in s["Resource"]]
    assert ssm_resources == [f"arn:aws:ssm:REGION:ACCOUNT_ID:parameter{user_data_setting('API_KEY_PARAMETER')}"]
    assert not any(r == "*" for s in found for r in s["Resource"])
    assert {a.partition(":")[0] for s in found for a in s["Action"]} == {"s3", "ssm"}



# --- serving/deploy/bootstrap.py and the settings files, read back by a shell -----------------------------------


def test_api_key_env_file_from_a_secure_string(mocked_aws: Any, tmp_path: Path) -> None:
    from serving.deploy import bootstrap

    key = "k3y-Abc+def/ghi=jkl_mno.pqr~stu"
    mocked_aws["ssm"].put_parameter(Name="/mlops/prediction-server/api-key", Value=key, Type="SecureString")
    output = tmp_path / "etc" / "serving-secrets.env"
    assert bootstrap.main(["api-key-env", "--parameter", "/mlops/prediction-server/api-key",
                           "--output", str(output)]) == 0
    assert output.stat().st_mode & 0o777 == 0o600
    assert f"SERVING_API_KEY={key}\n" in output.read_text()
    # The file reads back the same through a shell `.` and through systemd's parser rules (no quoting needed).
    sourced = subprocess.run(["bash", "-c", f'set -a; . "{output}"; printf %s "$SERVING_API_KEY"'],
                             capture_output=True, text=True, check=True).stdout
    assert sourced == key
    assert sorted(p.name for p in output.parent.iterdir()) == ["serving-secrets.env"]  # no temp file left



@pytest.fixture
def layout() -> Any:
    """A world-readable stand-in for /opt/mlops and /etc/mlops (the service user must be able to reach it)."""
    root = Path(tempfile.mkdtemp(prefix="mlops-layout-", dir="/tmp"))
    root.chmod(0o755)
    for name in ("etc", "bin", "app", "venv/bin", "models"):
        (root / name).mkdir(parents=True)
    python = root / "venv" / "bin" / "python"  # records who runs it, where, with which settings and arguments
    python.write_text('#!/bin/sh\n'
                      'printf "%s\\n" "$(id -un)" "$(pwd)" "$SERVING_MODEL_STORE" "$AWS_DEFAULT_REGION" "$@"\n')
    python.chmod(0o755)
    yield root
    shutil.rmtree(root)



def test_settings_file_and_the_store_commands_run_as_the_service_user(layout: Path) -> None:
    """serving.env reads the same in systemd and bash; refresh/rollback called as root run as the service user."""
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    settings = (f"ETC_DIR={layout}/etc BIN_DIR={layout}/bin CLI={layout}/bin/mlops-serving VENV={layout}/venv "
                f"APP_DIR={layout}/app MODEL_STORE={layout}/models REGION=eu-west-1 API_KEY_PARAMETER= "
                f"SIGNING_KEY_FILE={layout}/etc/bundle-signing.pub SERVICE_USER={user}; ")
    done = user_data(settings + 'SIGNING_PUBLIC_KEY="$TEST_KEY"; write_config', env={"TEST_KEY": public_key_pem()})
    assert "API_KEY_PARAMETER is empty" in done.stdout + done.stderr  # no key: said loudly
    env_file = layout / "etc" / "serving.env"
    assert env_file.stat().st_mode & 0o777 == 0o644 and not (layout / "etc" / "serving-secrets.env").exists()
    lines = [line for line in env_file.read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Z_]+=[^\s'\"$`\\]+", line) for line in lines), lines  # no quoting rules needed
    values = dict(line.split("=", 1) for line in lines)
    # gunicorn on the loopback only (nginx faces the network on SERVING_PORT); the refresh command confirms there.
    assert values == {"SERVING_BIND": "127.0.0.1:8001", "SERVING_WORKERS": "2",
                      "SERVING_MODEL_STORE": f"{layout}/models",
                      "SERVING_PUBLIC_KEY": f"{layout}/etc/bundle-signing.pub", "SERVING_MODEL_NAME": "wine-quality",
                      "SERVING_URL": "http://127.0.0.1:8001", "MLOPS_APP_DIR": f"{layout}/app",
                      "MLOPS_PYTHON": f"{layout}/bin/python", "AWS_REGION": "eu-west-1",
                      "AWS_DEFAULT_REGION": "eu-west-1", "SERVING_CAPTURE_DIR": "/var/lib/mlops-capture",
                      "SERVING_CAPTURE_SAMPLE": "1.0", "MLOPS_CAPTURE_SHIP_TO": "s3://my-mlops-bucket/models/capture"}
    key = layout / "etc" / "bundle-signing.pub"
    assert key.read_text() == public_key_pem() and key.stat().st_mode & 0o777 == 0o644
    assert key.stat().st_uid == os.geteuid()  # root's on an instance: the script runs as root
    off = user_data(settings + 'SIGNING_PUBLIC_KEY="$TEST_KEY"; CAPTURE_SAMPLE=0; write_config',
                    env={"TEST_KEY": public_key_pem()})
    assert off.returncode == 0 and "SERVING_CAPTURE" not in env_file.read_text()  # capture off: nothing set
    done = user_data(settings + 'SIGNING_PUBLIC_KEY="$TEST_KEY"; write_config', env={"TEST_KEY": public_key_pem()})
    ran = subprocess.run([str(layout / "bin" / "mlops-serving"), "rollback"], capture_output=True, text=True,
                         timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [user, f"{layout}/app", f"{layout}/models", "eu-west-1", "-m", "serving",
                                       "rollback"]

