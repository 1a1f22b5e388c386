"""Startup per worker: loading and checking the default champion's bundle in a fresh process, with two trees' code.

Builds the default champion as training fits it and export writes it: include/config (wine quality, extra trees with
params.yaml's hyperparameters) fitted on the training split, saved as MLflow logs it (skops, input example, feature
contract), converted to ONNX with its agreement checked (model.onnx, include/release/onnx), manifest, signature.
Then, in fresh Python processes alternating between the trees, it times what a gunicorn worker does before it
serves (create_app -> ModelHolder.refresh -> serving.model.load_bundle):

- import: `import serving.app` (Flask, numpy, pandas, scikit-learn, onnxruntime ...);
- load: `load_bundle(bundle)`: signature, checksums, skops load, the ONNX Runtime session, the agreement check on
  the self-check and edge rows, the self-check.

Each is timed as wall seconds and as the process's CPU seconds (all its threads): on a shared machine the wall
figures grow with the other processes' load, the CPU figures much less.

`--old` is a checkout of the code before conversion moved to export (main at 9ede9e5): its load_bundle converts the
estimator with skl2onnx at every load; model.onnx, a signed file its manifest check accepts, it ignores. So both
trees load the same bytes. Bytecode goes to a private cache (PYTHONPYCACHEPREFIX), so no tree is written to, and a
first unmeasured run per tree compiles it.

    .venv/bin/python -m bench.bundle_load --old /work/main              # ~2 minutes on 2 cores
    .venv/bin/python -m bench.bundle_load --old /work/main --runs 9

Prints a markdown table (median and range of each tree's seconds) and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_CONFIG_DIR, PROJECT_ROOT, RESULTS_DIR, BenchmarkError, busy_cpu_seconds, machine_facts

log = logging.getLogger(__name__)
KEYS = ("import_s", "import_cpu_s", "load_s", "load_cpu_s", "process_s")

CHILD = """
import json, sys, time
started, started_cpu = time.perf_counter(), time.process_time()
from pathlib import Path
import serving.app
from serving.model import load_bundle
from serving.signing import load_public_keys
imported, imported_cpu = time.perf_counter(), time.process_time()
model = load_bundle(Path(sys.argv[1]), load_public_keys(Path(sys.argv[2])))
loaded, loaded_cpu = time.perf_counter(), time.process_time()
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported,
                  "import_cpu_s": imported_cpu - started_cpu, "load_cpu_s": loaded_cpu - imported_cpu,
                  "engine": model.engine.name,
                  "reason": model.engine.reason, "converters": sorted({m.split(".")[0] for m in sys.modules
                                                                       if m.split(".")[0] in ("skl2onnx", "onnx")})}))
"""


def build_champion(config_dir: Path, workdir: Path) -> tuple[Path, Path]:
    """The default champion as a signed bundle under `workdir`, and the public key that verifies it."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.model_selection import train_test_split

    from include.ml.components.training import build_pipeline, skops_trusted_types
    from include.ml.config_file import SigningConfig
    from include.ml.configuration import ConfigurationManager
    from include.ml.entities import TrainingConfig
    from include.release.onnx.bundle import write_model_onnx
    from include.release.signing import LocalSigner, ensure_local_key_pair, sign_bundle
    from serving import store

    config = ConfigurationManager(config_dir, env={}).config
    schema = config.schema
    frame = pd.read_csv(PROJECT_ROOT / config.data_source.uri, sep=config.data_source.separator)
    train, _ = train_test_split(frame, test_size=config.split.test_size, random_state=config.split.random_state)
    x, y = train[[c.name for c in schema.features]], train[schema.target]
    pipeline = build_pipeline(TrainingConfig(schema, config.model, config.mlflow, {})).fit(x, y)
    log.info("fitted %s on %d rows", type(pipeline.named_steps["model"]).__name__, len(x))
    bundle = workdir / "store" / "1"
    example = x.head(5)
    mlflow.sklearn.save_model(pipeline, str(bundle / store.MODEL_DIR), serialization_format="skops",
                              skops_trusted_types=skops_trusted_types(pipeline, config.model.family),
                              signature=infer_signature(example, pipeline.predict(example)), input_example=example,
                              metadata={"feature_contract": schema.feature_contract()})
    started = time.perf_counter()
    onnx = write_model_onnx(bundle)
    log.info("converted at export in %.1fs: %s", time.perf_counter() - started, onnx)
    (bundle / store.METADATA).write_text(json.dumps({"name": "wine", "version": "1", "onnx": onnx}))
    signing = SigningConfig(private_key=workdir / "bench.key", public_key=workdir / "bench.pub")
    ensure_local_key_pair(signing)
    # The code before (9ede9e5) reads a manifest of checksums only; since then the signed manifest also names the
    # model and version in header lines, which the old reader refuses. Each tree gets the manifest it reads, over
    # the same files, signed by the same key.
    old = workdir / "store-before" / "1"
    shutil.copytree(bundle, old)
    store.write_manifest(bundle, "wine", "1")
    manifest = (bundle / store.MANIFEST).read_text()
    (old / store.MANIFEST).write_text("".join(line for line in manifest.splitlines(keepends=True)
                                              if not line.startswith("#")))
    for signed in (bundle, old):
        sign_bundle(signed, LocalSigner(signing.private_key))
    return bundle, signing.public_key


def load_once(tree: Path, bundle: Path, public_key: Path, pycache: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVING_", "PYTHON"))}
    env.update(PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=str(pycache), OMP_NUM_THREADS="1")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(bundle), str(public_key)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchmarkError(f"loading with {tree} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": wall}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summary(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| code | engine | import serving.app: wall s | CPU s | load_bundle (load + check): wall s | CPU s "
             "| process wall s |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        cells = [f"{result[k]['median']:.2f} ({result[k]['min']:.2f}–{result[k]['max']:.2f})" for k in KEYS]
        lines.append(f"| {name} | {result['engine']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the code before (e.g. /work/main)")
    parser.add_argument("--new", type=Path, default=PROJECT_ROOT, help="checkout of the code after (this one)")
    parser.add_argument("--runs", type=int, default=5, help="measured loads per tree (alternating)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    trees = {"before (converts at load)": args.old.resolve(), "after (model.onnx from export)": args.new.resolve()}
    with tempfile.TemporaryDirectory(prefix="bench-bundle-load-") as tmp:
        workdir = Path(tmp)
        bundle, public_key = build_champion(args.config_dir, workdir)
        busy_before, children_before = busy_cpu_seconds(), _children_cpu()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        bundles = {name: workdir / "store-before" / "1" if name.startswith("before") else bundle for name in trees}
        for name, tree in trees.items():  # compiles each tree's bytecode into the private cache, unmeasured
            load_once(tree, bundles[name], public_key, workdir / "pycache")
        started = time.perf_counter()
        for i in range(args.runs):
            for name, tree in (trees.items() if i % 2 == 0 else reversed(trees.items())):
                runs[name].append(load_once(tree, bundles[name], public_key, workdir / "pycache"))
                log.info("%s run %d: %s", name, i + 1, runs[name][-1])
        elapsed = time.perf_counter() - started
        busy_after, own = busy_cpu_seconds(), _children_cpu() - children_before
    results = {name: {"engine": r[0]["engine"], "reason": r[0]["reason"], "converters_imported": r[0]["converters"],
                      **{k: summary(r, k) for k in KEYS}, "runs": r}
               for name, r in runs.items()}
    other = None if busy_before is None or busy_after is None else max(busy_after - busy_before - own, 0) / elapsed
    report = {"benchmark": "bundle_load", "machine": machine_facts(), "other_cores": other,
              "trees": {name: str(tree) for name, tree in trees.items()}, "results": results}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"bundle-load-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results))
    print(f"\nother processes' CPU during the runs: {other if other is None else round(other, 2)} cores; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
