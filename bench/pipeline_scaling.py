"""Pipeline scaling benchmark: wall time and peak memory of every stage as the data grows.

For each size it generates a seeded synthetic CSV shaped by a schema.yaml (bench/synthetic.py), writes a
throw-away config directory (the project's three YAML files with the model family
switched to HistGradientBoosting), and runs each stage as its own
`main.py --stage S --run-id R --config-dir D` child process, measuring the child's
wall time, CPU time and peak RSS (os.wait4). A start-up baseline per stage (a child
that only loads the config and imports what that stage imports) separates fixed
overhead from work that grows with the data.

This is a benchmark, not a test: it takes minutes and its numbers depend on the machine.

    .venv/bin/python -m bench.pipeline_scaling                       # 10k, 100k, 1M rows
    .venv/bin/python -m bench.pipeline_scaling --rows 20000 --keep   # one size, keep the temp dir
    .venv/bin/python -m bench.pipeline_scaling --config-dir examples/penguins
    # 1M rows on a "shared" machine (one busy loop alongside), trying an OpenMP setting:
    .venv/bin/python -m bench.pipeline_scaling --rows 1000000 --background-load 1 --env OMP_WAIT_POLICY=PASSIVE
    .venv/bin/python -m bench.pipeline_scaling --report bench/results/<file>.json

Results: a Markdown table on stdout and a JSON file under bench/results/ (git-ignored).
Before each measurement it waits (up to --idle-timeout) for other processes to go quiet,
and records how much CPU they used anyway ("other load"), so a noisy run is visible.
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from bench.common import (
    CONFIG_FILES,
    DEFAULT_CONFIG_DIR,
    IDLE_THRESHOLD_CORES,
    OUTPUT_TAIL_LINES,
    PROJECT_ROOT,
    RESULTS_DIR,
    BenchmarkError,
    busy_cpu_seconds,
    machine_facts,
    stage_env,
    tail,
    wait_until_idle,
    write_config_dir,
)
from bench.synthetic import generate_in_child, load_schema

log = logging.getLogger(__name__)

STAGES = ("ingest", "validate", "transform", "train", "evaluate")
# The stages the target in the issue covers: 1M rows in < 3 min and < 4 GB peak on 2 cores.
TARGET_STAGES = ("ingest", "validate", "train")
TARGET_SECONDS = 180.0
TARGET_PEAK_MB = 4096.0
# What each stage's child imports besides main.py and the config (which already pulls in
# sklearn estimators); the start-up baseline imports exactly these and exits.
STAGE_IMPORTS: dict[str, tuple[str, ...]] = {
    "ingest": ("pandas", "pyarrow.parquet", "include.ml.components.ingestion"),
    "validate": ("pandas", "pyarrow.parquet", "great_expectations", "include.ml.components.validation"),
    "transform": ("pandas", "pyarrow.parquet", "sklearn.model_selection", "include.ml.components.transformation"),
    "train": ("pandas", "pyarrow.parquet", "mlflow", "mlflow.sklearn", "mlflow.models", "skops.io",
              "include.ml.components.training"),
    "evaluate": ("pandas", "pyarrow.parquet", "mlflow", "mlflow.sklearn", "skops.io", "matplotlib.pyplot",
                 "sklearn.inspection", "include.ml.components.evaluation"),
}
MEASURABLE_WORK_S = 1.0  # below this, work (wall - start-up) is mostly measurement noise


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    user_s: float
    sys_s: float
    peak_mb: float  # ru_maxrss (KiB on Linux) / 1024, i.e. MiB
    returncode: int
    # CPU the rest of the machine used meanwhile, in cores (0.0 = we had the machine to ourselves).
    other_cores: float


@contextmanager
def background_load(processes: int) -> Iterator[None]:
    """Keep `processes` busy-looping children running meanwhile: a shared machine, reproducibly."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
            for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run_measured(cmd: list[str], env: dict[str, str], log_dir: Path, label: str, idle_timeout: float = 0.0,
                 load: int = 0) -> Measurement:
    """Run `cmd` as a child, wait for it with os.wait4 and return its wall time and rusage.

    With `idle_timeout`, first wait for other processes to quieten down; with `load`, then run that many
    busy loops alongside the child."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{label}.stdout", log_dir / f"{label}.stderr"
    if idle_timeout > 0:
        wait_until_idle(idle_timeout)
    with out_path.open("wb") as out, err_path.open("wb") as err, background_load(load):
        busy_before = busy_cpu_seconds()
        started = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        busy_after = busy_cpu_seconds()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    other = 0.0
    if busy_before is not None and busy_after is not None and wall > 0:
        other = max(busy_after - busy_before - usage.ru_utime - usage.ru_stime, 0.0) / wall
    measurement = Measurement(round(wall, 3), round(usage.ru_utime, 3), round(usage.ru_stime, 3),
                              round(usage.ru_maxrss / 1024, 1), child.returncode, round(other, 2))
    if child.returncode != 0:
        raise BenchmarkError(
            f"{label} failed with exit code {child.returncode}: {' '.join(cmd)}\n"
            f"--- stderr (last {OUTPUT_TAIL_LINES} lines, full: {err_path}) ---\n{tail(err_path)}\n"
            f"--- stdout (last {OUTPUT_TAIL_LINES} lines, full: {out_path}) ---\n{tail(out_path)}")
    return measurement


def baseline_command(config_dir: Path, stage: str) -> list[str]:
    """A child that starts like a stage (main.py's imports, config load, the stage's imports) and exits."""
    code = (
        "import importlib, sys; sys.argv = ['main.py']; import main; "
        "from include.ml.configuration import ConfigurationManager; "
        f"ConfigurationManager({str(config_dir)!r}); "
        f"[importlib.import_module(m) for m in {list(STAGE_IMPORTS[stage])!r}]"
    )
    return [sys.executable, "-c", code]


def stage_command(config_dir: Path, stage: str, run_id: str) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "main.py"), "--stage", stage, "--run-id", run_id,
            "--config-dir", str(config_dir)]


@dataclass
class StageResult:
    rows: int
    stage: str
    wall_s: float
    user_s: float
    sys_s: float
    peak_mb: float
    baseline_s: float
    baseline_peak_mb: float
    other_cores: float
    fit_s: float | None = None  # train only: the estimator's fit, as the stage reports it

    @property
    def work_s(self) -> float:
        return max(self.wall_s - self.baseline_s, 0.0)


@dataclass
class SizeResult:
    rows: int
    csv_bytes: int
    generate_s: float
    stages: list[StageResult] = field(default_factory=list)

    def total(self, stages: tuple[str, ...] = TARGET_STAGES) -> tuple[float, float, float]:
        """(wall s, work s, peak MB) over `stages`; the peak is the largest single child's."""
        chosen = [s for s in self.stages if s.stage in stages]
        return (sum(s.wall_s for s in chosen), sum(s.work_s for s in chosen), max(s.peak_mb for s in chosen))


def measure_baselines(config_dir: Path, env: dict[str, str], log_dir: Path, repeats: int,
                      idle_timeout: float, load: int) -> dict[str, Measurement]:
    """Median start-up cost per stage (imports + config load), after one warm-up of the file cache."""
    baselines = {}
    for stage in STAGES:
        cmd = baseline_command(config_dir, stage)
        run_measured(cmd, env, log_dir, f"baseline-{stage}-warmup")
        runs = [run_measured(cmd, env, log_dir, f"baseline-{stage}-{i}", idle_timeout, load) for i in range(repeats)]
        wall = statistics.median(r.wall_s for r in runs)
        chosen = min(runs, key=lambda r: abs(r.wall_s - wall))
        baselines[stage] = chosen
        log.info("baseline %-9s %6.2fs  %7.1f MB", stage, chosen.wall_s, chosen.peak_mb)
    return baselines


def run_size(rows: int, args: argparse.Namespace, workspace: Path,
             baselines: dict[str, Measurement] | None) -> tuple[SizeResult, dict[str, Measurement]]:
    size_dir = workspace / f"rows-{rows}"
    config_dir = write_config_dir(args.config_dir, size_dir / "config", args.family, {"max_iter": args.max_iter})
    csv_path = size_dir / "data.csv"
    generate_s = generate_in_child(args.config_dir, rows, args.seed, csv_path)
    log.info("%d rows: generated %s (%.1f MB) in %.1fs", rows, csv_path, csv_path.stat().st_size / 2**20, generate_s)

    env = stage_env(csv_path, size_dir, args.env)
    if baselines is None:
        baselines = measure_baselines(config_dir, env, size_dir / "logs", args.baseline_repeats, args.idle_timeout,
                                       args.background_load)
    result = SizeResult(rows, csv_path.stat().st_size, round(generate_s, 2))
    run_id = f"bench-{rows}"
    for stage in STAGES:
        m = run_measured(stage_command(config_dir, stage, run_id), env, size_dir / "logs", stage, args.idle_timeout,
                         args.background_load)
        b = baselines[stage]
        result.stages.append(StageResult(rows, stage, m.wall_s, m.user_s, m.sys_s, m.peak_mb, b.wall_s, b.peak_mb,
                                         m.other_cores, _fit_seconds(size_dir, run_id, stage)))
        log.info("%d rows: %-9s %7.2fs  %7.1f MB  (cpu %.1fs, other processes %.2f cores)",
                 rows, stage, m.wall_s, m.peak_mb, m.user_s + m.sys_s, m.other_cores)
    return result, baselines


def _fit_seconds(size_dir: Path, run_id: str, stage: str) -> float | None:
    """The estimator's own fit time, which the train stage records in its result.json."""
    path = size_dir / "artifacts" / run_id / stage / "result.json"
    if stage != "train" or not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("fit_seconds")
    return float(value) if isinstance(value, (int, float)) else None


# --------------------------------------------------------------------------- reporting


def markdown_report(results: list[SizeResult]) -> str:
    lines = ["| rows | stage | wall s | start-up s | work s | CPU s | peak MB | other load |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in results:
        for s in size.stages:
            lines.append(f"| {size.rows:,} | {s.stage} | {s.wall_s:.1f} | {s.baseline_s:.1f} | {s.work_s:.1f} "
                         f"| {s.user_s + s.sys_s:.1f} | {s.peak_mb:,.0f} | {s.other_cores:.2f} |")
    lines += ["", "start-up: median of a child that only imports what the stage imports and loads the config; "
              "work = wall - start-up; CPU = user + sys of the child (2 cores: up to 2x wall); "
              "peak MB = the child's max RSS in MiB; other load = cores other processes used meanwhile.",
              "", f"Target ({' + '.join(TARGET_STAGES)}, 1M rows): < {TARGET_SECONDS:.0f} s and "
              f"< {TARGET_PEAK_MB / 1024:.0f} GB peak.", ""]
    for size in results:
        wall, work, peak = size.total()
        verdict = ""
        if size.rows >= 1_000_000:
            ok = wall < TARGET_SECONDS and peak < TARGET_PEAK_MB
            verdict = f" -> {'MEETS' if ok else 'MISSES'} the target"
        train = next((s for s in size.stages if s.stage == "train" and s.fit_s is not None), None)
        fit = f"; train's estimator fit {train.fit_s:.1f} s of its {train.wall_s:.1f} s" if train else ""
        lines.append(f"- {size.rows:,} rows: {' + '.join(TARGET_STAGES)} = {wall:.1f} s wall "
                     f"({work:.1f} s beyond start-up), peak {peak:,.0f} MB{verdict}{fit}")
    if len(results) > 1:
        lines += ["", growth_table(results), "", marginal_cost(results[-2], results[-1])]
    return "\n".join(lines)


def growth_table(results: list[SizeResult]) -> str:
    """Per stage, how wall, work and peak move across the sizes; work ratios only where work is measurable."""
    arrow = " → "
    header = arrow.join(_short(r.rows) for r in results)
    lines = [f"| stage | wall s ({header}) | work s | peak MB | work growth per step (rows x"
             + ", x".join(f"{b.rows / a.rows:g}" for a, b in zip(results, results[1:])) + ") |",
             "|---|---:|---:|---:|---|"]
    for stage in (*STAGES, "+".join(TARGET_STAGES)):
        walls = [_sum(r, stage, "wall_s") for r in results]
        works = [_sum(r, stage, "work_s") for r in results]
        peaks = [_peak(r, stage) for r in results]
        steps = [f"x{wb / wa:.1f}" if wa >= MEASURABLE_WORK_S else "start-up bound"
                 for wa, wb in zip(works, works[1:])]
        lines.append(f"| {stage} | {arrow.join(f'{w:.1f}' for w in walls)} | {arrow.join(f'{w:.1f}' for w in works)} "
                     f"| {arrow.join(f'{p:,.0f}' for p in peaks)} | {', '.join(steps)} |")
    lines += ["", "Linear growth would be a work ratio equal to the rows ratio; 'start-up bound' means the smaller "
              f"size did under {MEASURABLE_WORK_S:.0f} s of work, too little to compute a ratio from."]
    return "\n".join(lines)


def marginal_cost(small: SizeResult, large: SizeResult) -> str:
    """Cost per extra million rows between the two largest sizes, and where the target's limits would fall."""
    (wall_a, _, peak_a), (wall_b, _, peak_b) = small.total(), large.total()
    millions = (large.rows - small.rows) / 1e6
    per_s, per_mb = (wall_b - wall_a) / millions, (peak_b - peak_a) / millions
    reach = []
    limits = (("time", wall_b, TARGET_SECONDS, per_s), ("memory", peak_b, TARGET_PEAK_MB, per_mb))
    for name, value, limit, slope in limits:
        if slope > 0 and value < limit:
            reach.append(f"{name} limit at ~{(large.rows + (limit - value) / slope * 1e6) / 1e6:.0f}M rows")
    return (f"Marginal cost of {' + '.join(TARGET_STAGES)} between {_short(small.rows)} and {_short(large.rows)} rows: "
            f"{per_s:.1f} s and {per_mb:,.0f} MB per extra million rows"
            + (f"; extrapolating linearly: {', '.join(reach)}." if reach else "."))


def _short(rows: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % (size // 10) == 0:
            return f"{rows / size:g}{unit}"
    return str(rows)


def _sum(size: SizeResult, stage: str, attribute: str) -> float:
    names = tuple(stage.split("+"))
    return sum(getattr(s, attribute) for s in size.stages if s.stage in names)


def _peak(size: SizeResult, stage: str) -> float:
    names = tuple(stage.split("+"))
    return max(s.peak_mb for s in size.stages if s.stage in names)


def write_json(results: list[SizeResult], args: argparse.Namespace, baselines: dict[str, Measurement] | None,
               machine: dict[str, Any], output: Path) -> Path:
    payload = {
        "benchmark": "pipeline_scaling",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {"rows": args.rows, "seed": args.seed, "config_dir": str(args.config_dir),
                     "family": args.family, "hyperparameters": {"max_iter": args.max_iter},
                     "baseline_repeats": args.baseline_repeats, "idle_timeout": args.idle_timeout,
                     "extra_env": args.env, "background_load": args.background_load},
        "target": {"stages": list(TARGET_STAGES), "seconds": TARGET_SECONDS, "peak_mb": TARGET_PEAK_MB},
        "baselines": {k: asdict(v) for k, v in (baselines or {}).items()},
        "sizes": [{"rows": r.rows, "csv_bytes": r.csv_bytes, "generate_s": r.generate_s,
                   "target_total": dict(zip(("wall_s", "work_s", "peak_mb"), r.total())),
                   "stages": [{**asdict(s), "work_s": round(s.work_s, 3)} for s in r.stages]} for r in results],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return output


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="data sizes to run, in rows (default: 10000 100000 1000000)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR,
                        help="directory with config.yaml, schema.yaml, params.yaml (default: include/config)")
    parser.add_argument("--seed", type=int, default=20240601, help="numpy default_rng seed for the data")
    parser.add_argument("--family", default="hist_gradient_boosting", help="model.family to benchmark")
    parser.add_argument("--max-iter", type=int, default=100, help="model.hyperparameters.max_iter")
    parser.add_argument("--baseline-repeats", type=int, default=3,
                        help="start-up baseline runs per stage; the median is used (default: 3)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for every child, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N busy-loop processes alongside every measured child, to see how the stages "
                             "behave on a shared machine (e.g. next to the Airflow scheduler); default: 0")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="print the Markdown report of an earlier run's JSON and exit (runs nothing)")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="before each measurement, wait up to this many seconds for other processes to use "
                             f"< {IDLE_THRESHOLD_CORES} cores (0: don't wait; default: 60)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the temporary data, configs and stores go (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (for inspection)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results path (default: bench/results/pipeline_scaling-<UTC time>.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if any(r < 1 for r in args.rows):
        parser.error("--rows must be positive")
    args.rows = sorted(set(args.rows))
    pairs = [item.partition("=") for item in args.env]
    if any(not name or not sep for name, sep, _ in pairs):
        parser.error("--env expects NAME=VALUE")
    args.env = {name: value for name, _, value in pairs}
    args.config_dir = args.config_dir.resolve()
    missing = [n for n in CONFIG_FILES if not (args.config_dir / n).is_file()]
    if missing:
        parser.error(f"--config-dir {args.config_dir} lacks {', '.join(missing)}")
    return args


def load_results(path: Path) -> tuple[dict[str, Any], list[SizeResult]]:
    """The settings and per-size results of a JSON file written by an earlier run."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    names = {f.name for f in fields(StageResult)}
    sizes = [SizeResult(s["rows"], s["csv_bytes"], s["generate_s"],
                        [StageResult(**{k: v for k, v in st.items() if k in names}) for st in s["stages"]])
             for s in payload["sizes"]]
    return payload.get("settings", {}), sizes


def settings_note(extra_env: dict[str, str], load: int) -> str:
    notes = []
    if extra_env:
        notes.append("extra environment for every stage: " + " ".join(f"{k}={v}" for k, v in extra_env.items()))
    if load:
        notes.append(f"{load} busy-loop process(es) running alongside every measurement")
    return "".join(f"Note: {n}\n" for n in notes) + ("\n" if notes else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.report:
        settings, results = load_results(args.report)
        print(settings_note(settings.get("extra_env") or {}, settings.get("background_load") or 0)
              + markdown_report(results))
        return 0
    load_schema(args.config_dir)  # fail fast on a schema the generator cannot follow
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_facts()  # before the run, so the load average describes the starting point
    workspace = Path(tempfile.mkdtemp(prefix="pipeline-bench-", dir=args.work_dir))
    log.info("workspace %s; sizes %s; %s with max_iter=%d", workspace, args.rows, args.family, args.max_iter)
    results: list[SizeResult] = []
    baselines: dict[str, Measurement] | None = None
    try:
        for rows in args.rows:
            result, baselines = run_size(rows, args, workspace, baselines)
            results.append(result)
    except BenchmarkError as exc:
        log.error("%s", exc)
        log.error("workspace kept for inspection: %s", workspace)
        return 1
    if not args.keep:
        shutil.rmtree(workspace, ignore_errors=True)
    else:
        log.info("workspace kept: %s", workspace)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parent_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine["benchmark_process_peak_mb"] = round(parent_peak_mb, 1)
    floored = [f"{s.rows}/{s.stage}" for r in results for s in r.stages if s.peak_mb <= parent_peak_mb * 1.05]
    if floored:  # see generate_in_child: such peaks may be this process's RSS, not the stage's
        log.warning("peaks of %s are within 5%% of this process's own peak (%.0f MB); treat them as upper bounds",
                    ", ".join(floored), parent_peak_mb)
    output = write_json(results, args, baselines, machine,
                        args.output or RESULTS_DIR / f"pipeline_scaling-{stamp}.json")
    print(settings_note(args.env, args.background_load) + markdown_report(results))
    print(f"\nJSON: {output.relative_to(PROJECT_ROOT) if output.is_relative_to(PROJECT_ROOT) else output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
