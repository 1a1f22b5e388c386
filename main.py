"""Run the ML pipeline without Airflow: `python main.py` runs every stage in order.

    python main.py                      # ingest -> ... -> evaluate -> deploy -> verify
    python main.py --stage train        # one stage, on the latest run's outputs
    python main.py --run-id my-run      # choose the run id (artifacts/<run id>/)
    python main.py --rollback [VERSION] # make an earlier model version champion again, and deploy it
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from include.ml import artifacts, pipeline
from include.ml.exceptions import ConfigError, PipelineError

if TYPE_CHECKING:
    from include.ml.configuration import ConfigurationManager

log = logging.getLogger("main")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=pipeline.STAGES, help="run only this stage")
    parser.add_argument("--run-id", help="pipeline run id; default: a new one, or the latest run for --stage")
    parser.add_argument("--config-dir", help="directory with config.yaml, schema.yaml, params.yaml "
                        "(default: include/config, or $MLOPS_CONFIG_DIR)")
    parser.add_argument("--force-promote", action="store_true", help="promote the new model whatever the gate says")
    parser.add_argument("--rollback", nargs="?", const="previous", metavar="VERSION",
                        help="make VERSION (default: the previous champion) the champion and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


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
    args = parse_args(argv)
    configure_logging(args.verbose)
    from include.ml.configuration import ConfigurationManager

    current = "configuration"  # what was running when an error surfaced

    def started(index: int, stage: str) -> None:
        nonlocal current
        current = stage
        print(f"[{index}/{len(stages)}] {stage} ...", flush=True)

    try:
        cm = ConfigurationManager(args.config_dir)
        if args.rollback:
            return _rollback(cm, args.rollback)
        if args.stage:
            stages = (args.stage,)
            run_id = args.run_id or (artifacts.new_run_id() if args.stage == "ingest"
                                     else artifacts.latest_run_id(cm.config.artifacts_root))
        else:
            stages, run_id = pipeline.STAGES, args.run_id or artifacts.new_run_id()
        run_id = artifacts.safe_run_id(run_id)
        print(f"pipeline run {run_id}: {' -> '.join(stages)} (artifacts: {cm.config.artifacts_root / run_id})")
        outcomes = pipeline.run(
            cm, run_id, stages, force_promote=args.force_promote,
            on_start=started,
            on_done=lambda i, o: print(f"[{i}/{len(stages)}] {o.stage} done in {o.seconds:.1f}s", flush=True))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"pipeline failed in stage {current}: {exc}", file=sys.stderr)
        return 1
    _print_summary(run_id, outcomes)
    return 0


def _print_summary(run_id: str, outcomes: list[pipeline.StageOutcome]) -> None:
    print(f"\nrun {run_id} finished: " + ", ".join(f"{o.stage} {o.seconds:.1f}s" for o in outcomes))
    evaluated = next((o.result for o in outcomes if o.stage == "evaluate"), None)
    if evaluated is None:
        return
    decision = evaluated.decision
    print(f"gate: {'PROMOTED' if decision.promoted else 'kept the champion'} - {decision.reason}")
    print(f"champion: {evaluated.model_name} v{evaluated.champion_version} on this test set: "
          + ", ".join(f"{k}={v:.4f}" for k, v in evaluated.champion_metrics.items()))
    for stage in ("deploy", "verify"):
        result = next((o.result for o in outcomes if o.stage == stage), None)
        if result is not None:
            print(f"{stage}: {result.summary()}")


def _rollback(cm: "ConfigurationManager", version: str) -> int:
    from mlflow.exceptions import MlflowException

    from include.ml import registry, tracking

    tracking.configure(cm.config.mlflow)
    name = cm.config.mlflow.registered_model_name
    try:
        chosen = registry.rollback(name, None if version == "previous" else version)
    except (LookupError, MlflowException) as exc:
        print(f"rollback failed: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: champion is now version {chosen}")
    try:
        deployed = pipeline.run_deploy(cm, artifacts.safe_run_id(f"rollback-{artifacts.new_run_id()}"), chosen)
    except PipelineError as exc:
        print(f"rollback deploy failed (the registry already names version {chosen}): {exc}", file=sys.stderr)
        return 1
    print(f"deploy: {deployed.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
