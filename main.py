"""Run the ML pipeline and its commands without Airflow.

    python main.py                        # ingest -> validate -> transform -> tune (when on) -> ... -> verify
    python main.py --stage tune           # one stage, on the latest run's outputs
    python main.py --run-id my-run        # choose the run id (artifacts/<run id>/)
    python main.py --rollback [VERSION]   # make an earlier model version champion again, and deploy it
    python main.py init --data data.csv --target y --out examples/mine   # draft the three YAML files
    python main.py export [--version champion] [--store DIR] [--activate] # registry -> a bundle in a model store
    python main.py serve                  # the prediction server on the champion, in the foreground
    python main.py keys                   # the bundle-signing keys (made on first use); what servers trust
    python main.py verify-provenance [--version champion]  # a version's signed provenance vs MLflow and artifacts
    python main.py predict --input in.csv --output out.parquet [--version V] [--on-bad-rows skip] [--explain]
    python main.py monitor --reference train.csv --current live.csv [--json]   # per-feature drift of two files
    python main.py release shadow --version N [--sample 0.2]   # N beside the champion, scoring a share off-path
    python main.py release canary --version N --percent 10 | promote | abort [--reason R] | status [--json]

Every command takes --config-dir DIR (default: $MLOPS_CONFIG_DIR, else include/config).
Exit codes: 0 success, 1 a stage or command failed (the message says which and why), 2 configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from include import batch_runs, pipeline
from include.ml import artifacts
from include.ml.exceptions import ConfigError, PipelineError

if TYPE_CHECKING:
    from include.ml.configuration import ConfigurationManager

log = logging.getLogger("main")
REPO = Path(__file__).resolve().parent


def _parser(command: str | None, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"main.py {command}" if command else "main.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", help="directory with config.yaml, schema.yaml, params.yaml "
                        "(default: $MLOPS_CONFIG_DIR, else include/config)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


class _QuietLibraries(logging.Filter):
    """Show only warnings from chatty libraries (some reset their own logger levels on import)."""

    NOISY = ("great_expectations", "mlflow", "alembic", "botocore", "urllib3", "matplotlib")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(self.NOISY)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietLibraries())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = COMMANDS[command][0]().parse_args(argv[1:] if command else argv)
    configure_logging(args.verbose)
    try:
        return COMMANDS[command][1](args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"{command or 'pipeline'} failed: {exc}", file=sys.stderr)
        return 1


# --- python main.py: the pipeline ------------------------------------------------------------------------------

def run_parser() -> argparse.ArgumentParser:
    parser = _parser(None, __doc__)
    parser.add_argument("--stage", choices=pipeline.STAGES, help="run only this stage")
    parser.add_argument("--run-id", help="pipeline run id; default: a new one, or the latest run for --stage")
    parser.add_argument("--force-promote", action="store_true", help="promote the new model whatever the gate says")
    parser.add_argument("--rollback", nargs="?", const="previous", metavar="VERSION",
                        help="make VERSION (default: the previous champion) the champion, deploy it and exit")
    return parser


def run(args: argparse.Namespace) -> int:
    from include.ml.configuration import ConfigurationManager

    cm = ConfigurationManager(args.config_dir)
    if args.rollback:
        return _rollback(cm, None if args.rollback == "previous" else args.rollback)
    if args.stage:
        stages = (args.stage,)
        run_id = args.run_id or (artifacts.new_run_id() if args.stage == "ingest"
                                 else artifacts.latest_run_id(cm.config.artifacts_root))
    else:
        stages, run_id = pipeline.STAGES, args.run_id or artifacts.new_run_id()
    run_id = artifacts.safe_run_id(run_id)
    print(f"pipeline run {run_id}: {' -> '.join(stages)} (artifacts: {cm.config.artifacts_root / run_id})")
    current = "configuration"

    def started(index: int, stage: str) -> None:
        nonlocal current
        current = stage
        print(f"[{index}/{len(stages)}] {stage} ...", flush=True)

    def done(index: int, outcome: pipeline.StageOutcome) -> None:
        if isinstance(outcome.result, pipeline.Skipped):
            print(f"[{index}/{len(stages)}] {outcome.stage} skipped: {outcome.result.reason}", flush=True)
        else:
            print(f"[{index}/{len(stages)}] {outcome.stage} done in {outcome.seconds:.1f}s", flush=True)

    try:
        outcomes = pipeline.run(cm, run_id, stages, force_promote=args.force_promote, on_start=started, on_done=done)
    except PipelineError as exc:
        print(f"pipeline failed in stage {current}: {exc}", file=sys.stderr)
        return 1
    _print_summary(run_id, outcomes)
    return 0


def _print_summary(run_id: str, outcomes: list[pipeline.StageOutcome]) -> None:
    print(f"\nrun {run_id} finished: " + ", ".join(
        f"{o.stage} skipped" if isinstance(o.result, pipeline.Skipped) else f"{o.stage} {o.seconds:.1f}s"
        for o in outcomes))
    results = {o.stage: o.result for o in outcomes}
    ingested = results.get("ingest")
    if ingested is not None and (ingested.rows_without_target or ingested.ignored_columns):
        print(f"data: {ingested.summary()}")  # what ingest left out: rows without a target, unlisted columns
    evaluated = results.get("evaluate")
    if evaluated is not None:
        decision = evaluated.decision
        print(f"gate: {'PROMOTED' if decision.promoted else 'kept the champion'} - {decision.reason}")
        print(*(f"WARNING {warning}" for warning in evaluated.leakage), sep="\n", end="\n" if evaluated.leakage else "")
        print(f"champion: {evaluated.model_name} v{evaluated.champion_version} on this test set: "
              + ", ".join(f"{k}={v:.4f}" for k, v in evaluated.champion_metrics.items()))
    for stage in ("tune", "deploy", "verify"):
        if stage in results:
            print(f"{stage}: {results[stage].summary()}")


def _rollback(cm: ConfigurationManager, version: str | None) -> int:
    """The same two steps as the ml_rollback DAG: move the champion alias, then deploy that version."""
    rolled_back = pipeline.run_rollback(cm, version)
    print(rolled_back.summary())
    try:
        deployed = pipeline.run_deploy(cm, artifacts.safe_run_id(f"rollback-{artifacts.new_run_id()}"),
                                       rolled_back.champion_after, rollback=True)
    except PipelineError as exc:
        raise PipelineError(f"rollback deploy (the registry already names version "
                            f"{rolled_back.champion_after}): {exc}") from exc
    print(f"deploy: {deployed.summary()}")
    return 0


# --- python main.py init: draft a config dir from the data -----------------------------------------------------

def init_parser() -> argparse.ArgumentParser:
    parser = _parser("init", "Draft config.yaml, schema.yaml and params.yaml from a data file; every guess is "
                             "marked '# guessed:' for review (rules: include/ml/drafting.py).")
    parser.add_argument("--data", required=True, help="a CSV (or a zip holding one): local path, http(s):// or s3://")
    parser.add_argument("--target", required=True, help="the column to predict")
    parser.add_argument("--task", choices=("regression", "classification"), help="default: guessed from the target")
    parser.add_argument("--separator", help="the CSV separator (default: sniffed; \\t for a tab)")
    parser.add_argument("--out", required=True, type=Path, help="the config dir to write (must not hold the files)")
    return parser


def init(args: argparse.Namespace) -> int:
    from include.ml.drafting import draft_config

    separator = "\t" if args.separator == "\\t" else args.separator
    drafted = draft_config(args.data, args.target, args.out, task=args.task, separator=separator)
    print(drafted.report())
    print(f"review every '# guessed:' line, then: python main.py --config-dir {args.out}")
    return 0


# --- python main.py export / serve: a registered version into a model store, and a server on it -----------------

def export_parser() -> argparse.ArgumentParser:
    parser = _parser("export", "Copy a registered model version from MLflow into a model store as a verified "
                               "bundle (python -m serving refresh/activate then serve it).")
    parser.add_argument("--version", default="champion", help="version number or alias (default: champion)")
    parser.add_argument("--store", type=Path, help="model store (default: deployment.local.model_store)")
    parser.add_argument("--activate", action="store_true", help="also make it the store's CURRENT version")
    return parser


def export(args: argparse.Namespace) -> int:
    from include.ml.configuration import ConfigurationManager

    print(pipeline.run_export(ConfigurationManager(args.config_dir), args.version, args.store, args.activate)
          .summary())
    return 0


def serve_parser() -> argparse.ArgumentParser:
    parser = _parser("serve", "Export the champion into the config's model store, make it current and run the "
                              "prediction server on it in the foreground (gunicorn; Ctrl-C stops it). For this "
                              "machine: it binds loopback, with no nginx in front; to serve a network, put nginx in "
                              "front (serving/deploy/nginx-prediction-server.conf; docs/serving.md).")
    parser.add_argument("--version", default="champion", help="version number or alias (default: champion)")
    parser.add_argument("--bind", help="host:port (default: from deployment.local.server_url, loopback); an address "
                                       "beyond loopback only behind nginx")
    return parser


def serve(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from include.ml.configuration import ConfigurationManager

    cm = ConfigurationManager(args.config_dir)
    exported = pipeline.run_export(cm, args.version, activate=True)
    url = urlsplit(cm.config.deployment.local.server_url)
    bind = args.bind or f"{url.hostname or '127.0.0.1'}:{url.port or 8000}"
    print(f"{exported.summary()}\nserving it on http://{bind} (a form at /, the API at /openapi.json)", flush=True)
    env = {**os.environ, "SERVING_MODEL_STORE": str(cm.config.model_store), "SERVING_BIND": bind,
           "SERVING_PUBLIC_KEY": str(cm.config.signing.public_key),
           "SERVING_MODEL_NAME": cm.config.mlflow.registered_model_name}
    command = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "serving" / "gunicorn.conf.py")]
    os.chdir(REPO)  # gunicorn imports serving.app from here
    os.execve(sys.executable, command, env)
    return 1  # not reached


def keys_parser() -> argparse.ArgumentParser:
    return _parser("keys", "The key pair (or KMS key) that signs bundles, made on first use; prints the public key "
                           "every prediction server must be given (SERVING_PUBLIC_KEY).")


def keys(args: argparse.Namespace) -> int:
    from include.ml.configuration import ConfigurationManager

    prepared = pipeline.run_keys(ConfigurationManager(args.config_dir))
    print(prepared.summary())
    print(prepared.public_key.read_text(), end="")
    return 0


def verify_provenance_parser() -> argparse.ArgumentParser:
    parser = _parser("verify-provenance", "Check a registered version's signed provenance statement (the bundle's "
                                          "provenance.json, served at GET /provenance): its signature, its files "
                                          "against the signed manifest, and each claim against MLflow (the "
                                          "version's training run and its provenance.* tags) and the artifacts "
                                          "(the data snapshot's sha256, if it is still on disk). Prints one line "
                                          "per claim; exit 1 on any mismatch.")
    parser.add_argument("--version", default="champion", help="version number or alias (default: champion)")
    return parser


def verify_provenance(args: argparse.Namespace) -> int:
    from include.ml.configuration import ConfigurationManager

    report = pipeline.run_verify_provenance(ConfigurationManager(args.config_dir), args.version)
    print(report.table())
    return 0 if report.ok else 1


# --- python main.py predict: score a file -----------------------------------------------------------------------

def predict_parser() -> argparse.ArgumentParser:
    parser = _parser("predict", "Score a CSV file (the configured separator; with or without the target column) "
                                "with a registered version, checked against schema.yaml chunk by chunk, into a CSV "
                                "or Parquet file (by its extension), written atomically.")
    parser.add_argument("--input", help="local path, http(s):// or s3:// URI (default: batch.input_uri)")
    parser.add_argument("--output", help=".csv/.parquet, s3:// URI or dir/ (Parquet dataset); default batch.output_uri")
    parser.add_argument("--version", default="champion", help="version number or alias (default: champion)")
    parser.add_argument("--on-bad-rows", choices=("fail", "skip", "flag"),
                        help="a row that breaks schema.yaml: fail the run (nothing written), skip it (left out of "
                             "the output) or flag it (kept without a prediction); skip and flag list every bad "
                             "row's reasons in <output>.rejected.csv (default: batch.on_bad_rows, itself fail)")
    parser.add_argument("--explain", action="store_true",
                        help="also explain each prediction: a contribution:<column> column per input column, "
                             "explain_base_value, explain_output (and explain_class), as POST /explain answers")
    parser.add_argument("--partitions", type=int, help="score in N partitions, one after the other (as the DAG's)")
    return parser


def predict(args: argparse.Namespace) -> int:
    from include.ml.configuration import ConfigurationManager

    # The user's own files: no allow-list here (the ml_batch_predict DAG applies data_source.allowed_sources).
    scored = batch_runs.run_predict(ConfigurationManager(args.config_dir), args.input, args.output, args.version,
                                    on_bad_rows=args.on_bad_rows, explain=args.explain, partitions=args.partitions)
    print(scored.summary())
    return 0


# --- python main.py monitor: drift between two files ----------------------------------------------------------

def monitor_parser() -> argparse.ArgumentParser:
    parser = _parser("monitor", "Compare each feature of two CSV files with the same columns (data_source.separator; "
                                "the target column is ignored): Kolmogorov-Smirnov + PSI for numeric features, "
                                "chi-square + Jensen-Shannon for categorical ones, with params.yaml's monitoring "
                                "thresholds. Exit 0 whether or not drift is found, 1 on bad input.")
    parser.add_argument("--reference", required=True, type=Path, help="the reference CSV, e.g. the training data")
    parser.add_argument("--current", required=True, type=Path, help="the CSV to compare with it, e.g. live inputs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def monitor(args: argparse.Namespace) -> int:
    import json

    from include.ml.configuration import ConfigurationManager

    report = pipeline.run_compare(ConfigurationManager(args.config_dir), args.reference, args.current)
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    print(f"{report.rows_current} current rows vs {report.rows_reference} reference rows; drifted: "
          f"{', '.join(report.drifted) or 'none'}")
    for feature in report.features.values():
        print(f"  {feature.status:>15}  {feature.describe()}")
    return 0


# --- python main.py release: progressive delivery (docs/releases.md) --------------------------------------------

def release_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config-dir", help="directory with config.yaml, schema.yaml, params.yaml "
                        "(default: $MLOPS_CONFIG_DIR, else include/config)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(prog="main.py release", description="A registered version beside the champion "
                                     "on every server of deployment.target, through the same signed pointers as a "
                                     "deploy: shadow, canary, then promote or abort (docs/releases.md).")
    sub = parser.add_subparsers(dest="action", required=True)
    shadow = sub.add_parser("shadow", parents=[common], help="the version also scores a share of the requests, "
                            "off the request path; clients always get the champion's answer")
    shadow.add_argument("--version", required=True, help="the registered version number")
    shadow.add_argument("--sample", type=float, default=None, help="share of requests it scores, in (0, 1] "
                        "(default: params.yaml release.shadow.sample, else 1.0)")
    canary = sub.add_parser("canary", parents=[common], help="the version answers a share of the requests "
                            "(sticky by the X-Client-Key header, else by request id)")
    canary.add_argument("--version", required=True, help="the registered version number")
    canary.add_argument("--percent", type=float, required=True, help="percent of requests it answers, in (0, 100]")
    sub.add_parser("promote", parents=[common], help="the candidate becomes the champion: 100 %% of traffic")
    abort = sub.add_parser("abort", parents=[common], help="every server back to the champion alone")
    abort.add_argument("--reason", default="aborted by hand (main.py release abort)",
                       help="recorded on the candidate version as release.aborted")
    status = sub.add_parser("status", parents=[common], help="the store's pointer and every server's /version")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def release(args: argparse.Namespace) -> int:
    import json

    from include.ml.configuration import ConfigurationManager

    cm = ConfigurationManager(args.config_dir)
    if args.action == "status":
        found = pipeline.run_release_status(cm)
        print(json.dumps(found.xcom()) if args.json else _status_table(found))
        return 0 if not found.drifted() else 1
    if args.action == "shadow":
        sample = args.sample if args.sample is not None else (
            cm.config.release.shadow.sample if cm.config.release.shadow else 1.0)
        done = pipeline.run_release_start(cm, args.version, "shadow", sample)
    elif args.action == "canary":
        done = pipeline.run_release_start(cm, args.version, "canary", args.percent / 100)
    elif args.action == "promote":
        done = pipeline.run_release_promote(cm)
    else:
        done = pipeline.run_release_abort(cm, args.reason)
    print(done.summary())
    return 0


def _status_table(found: Any) -> str:
    lines = [found.summary()]
    for server in found.instances:
        candidate = server.candidate
        shown = server.error or (f"version {server.version}" + (
            f" + candidate {candidate['version']} ({candidate['mode']} {candidate['share']:.0%})" if candidate
            else ", no candidate"))
        lines.append(f"  {server.instance_id:<22} {server.url or '-':<28} {shown}")
    return "\n".join(lines)


COMMANDS: dict[str | None, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    None: (run_parser, run), "init": (init_parser, init), "export": (export_parser, export),
    "serve": (serve_parser, serve), "keys": (keys_parser, keys), "predict": (predict_parser, predict),
    "monitor": (monitor_parser, monitor), "verify-provenance": (verify_provenance_parser, verify_provenance),
    "release": (release_parser, release),
}

if __name__ == "__main__":
    sys.exit(main())
