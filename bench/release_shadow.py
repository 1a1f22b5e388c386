"""A shadow release's cost: single-row throughput of one server with no release vs shadow at sample 1.0.

It trains the pipeline's default champion (or takes --bundle), adds a candidate to the same store (the champion's
model under another version name, re-signed with the config's signing key: scoring it costs what the champion
costs, so this is the cost of a candidate of the same model family), and starts ONE gunicorn server on the store
(SERVING_* defaults: 2 workers, micro-batching on). Then, --rounds times, it signs and activates (serving/
activation.py, waiting until the workers show it) a pointer without a release, runs wrk, then a pointer with the
candidate in shadow at share 1.0 (every request is scored twice: by the champion on the request path, by the
candidate on the worker's scorer thread after the response), runs wrk again. wrk: 1 thread, N connections, one row
per request to POST /invocations, after a warm-up, as bench/prediction_server/ does (its helpers are reused).
Alternating on the same server spreads the load of other processes over both modes.

For each shadow run it also reads the server's /metrics: the candidate's calls and the pairs dropped by a full
scorer queue, so the table says how many requests the candidate really scored.

It prints the medians (req/s, p50, p99, server CPU per request), the on/off ratios and the target (cost <= 10 %),
and writes the raw results to bench/results/release-shadow-<ts>.json. About 4 minutes with an existing bundle.

    .venv/bin/python -m bench.release_shadow                          # trains the default champion first
    .venv/bin/python -m bench.release_shadow --bundle models/wine-quality/3 --rounds 3 --duration 10

Needs wrk (Debian: `apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_CONFIG_DIR, RESULTS_DIR, BenchmarkError, free_port, machine_facts, wait_until_idle
from bench.prediction_server import (
    ProcessGroups,
    ServerSpec,
    dataframe_split,
    model_columns,
    payload_rows,
    run_wrk,
    server_command,
    train_and_export,
    wait_ready,
)

log = logging.getLogger("bench.release_shadow")
TARGET_COST = 0.10  # shadow at sample 1.0 may cost at most this fraction of single-row throughput (issue 23)
CANDIDATE_SUFFIX = "-shadow"


def add_candidate(champion: Path, store: Path, signing: Any) -> str:
    """The champion's bundle as another version of the store, re-signed: bundle.json names the new version, the
    provenance statement (which names the exported version) is left out, the manifest is rewritten and signed."""
    from include.release.signing import sign_bundle, signer_for
    from serving import store as store_mod

    version = champion.name + CANDIDATE_SUFFIX
    target = store / version
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(champion, target)
    (target / "provenance.json").unlink(missing_ok=True)
    meta = json.loads((target / store_mod.METADATA).read_text())
    meta["version"] = version
    (target / store_mod.METADATA).write_text(json.dumps(meta))
    store_mod.write_manifest(target, str(meta["name"]), version)
    sign_bundle(target, signer_for(signing))
    return version


class Releases:
    """Signs and activates the store's pointers: the champion alone, or with the candidate in shadow."""

    def __init__(self, store: Path, champion: str, candidate: str, signing: Any) -> None:
        from include.release.signing import signer_for, trusted_keys
        from serving import store as store_mod

        self.store, self.champion, self.candidate = store, champion, candidate
        self.signer, self.trusted = signer_for(signing), trusted_keys(signing)
        manifest = store_mod.parse_manifest(store_mod.read_regular(store / champion / store_mod.MANIFEST), champion)
        self.model, self.champion_sha = manifest.model, manifest.sha256
        self.candidate_sha = store_mod.parse_manifest(
            store_mod.read_regular(store / candidate / store_mod.MANIFEST), candidate).sha256

    def switch(self, shadow: bool, url: str | None = None) -> None:
        from include.release.signing import sign_pointer
        from serving import pointer as pointers
        from serving import store as store_mod
        from serving.activation import activate

        current = pointers.peek(store_mod.read_pointer(self.store))
        release = pointers.Candidate(self.candidate, self.candidate_sha, "shadow", 1.0) if shadow else None
        signed = sign_pointer(self.signer, self.model, self.champion, self.champion_sha,
                              current.sequence if current else None, candidate=release)
        with store_mod.locked(self.store):
            activate(self.store, signed.envelope, self.trusted, url, timeout=120, confirmations=6)


def release_counts(url: str) -> dict[str, float]:
    """The server's candidate calls (ok, error) and dropped pairs so far, summed over its workers."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310 - loopback only
        text = response.read().decode()
    counts = {"candidate_ok": 0.0, "candidate_error": 0.0, "dropped": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "serving_release_requests_total" and s.labels.get("role") == "candidate":
                counts[f"candidate_{s.labels['outcome']}"] += s.value
            elif s.name == "serving_release_shadow_dropped_total":
                counts["dropped"] += s.value
    return counts


def one_run(groups: ProcessGroups, url: str, pgid: int, body_file: Path, shadow: bool, args: argparse.Namespace,
            workdir: Path) -> dict[str, Any]:
    mode = "shadow" if shadow else "off"
    run_wrk(groups, f"{url}/invocations", body_file, args.connections, args.warmup, workdir, pgid)
    before = release_counts(url)
    run = run_wrk(groups, f"{url}/invocations", body_file, args.connections, args.duration, workdir, pgid)
    time.sleep(0.5)  # the scorer threads finish the last pairs
    after = release_counts(url)
    run.pop("wrk_stdout")
    run["mode"] = mode
    run["server_cpu_ms_per_req"] = 1000 * run["server_cores"] * run["seconds"] / max(run["requests"], 1)
    run.update({key: after[key] - before[key] for key in after})
    log.info("%s: %.0f req/s, p50 %.1f ms, p99 %.1f ms, server %.2f cores (%.3f ms CPU/request), other %.2f; "
             "candidate scored %d, dropped %d", mode, run["req_per_s"], run["p50_ms"], run["p99_ms"],
             run["server_cores"], run["server_cpu_ms_per_req"], run["other_cores"] or 0.0, run["candidate_ok"],
             run["dropped"])
    return run


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["mode"] == mode)

    keys = ("req_per_s", "p50_ms", "p99_ms", "server_cores", "server_cpu_ms_per_req", "other_cores")
    out: dict[str, Any] = {mode: {key: median(mode, key) for key in keys} for mode in ("off", "shadow")}
    out["ratio_on_off"] = out["shadow"]["req_per_s"] / out["off"]["req_per_s"]
    out["cost"] = 1 - out["ratio_on_off"]
    out["cpu_ratio_on_off"] = out["off"]["server_cpu_ms_per_req"] / out["shadow"]["server_cpu_ms_per_req"]
    out["cpu_cost"] = 1 - out["cpu_ratio_on_off"]
    out["target_met"] = out["cost"] <= TARGET_COST and out["cpu_cost"] <= TARGET_COST
    shadow = [r for r in runs if r["mode"] == "shadow"]
    # wrk counts answers received; requests in flight when it stops are answered (and scored) too
    out["scored_share"] = sum(r["candidate_ok"] for r in shadow) / max(sum(r["requests"] for r in shadow), 1)
    out["dropped"] = sum(r["dropped"] for r in shadow)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.release_shadow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="an exported bundle (<store>/<version>); default: train one")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode, alternating off and shadow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from include.ml.configuration import ConfigurationManager

    signing = ConfigurationManager(args.config_dir, env={}).config.signing
    groups = ProcessGroups()
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
            workdir = Path(tmp)
            source = args.bundle.resolve() if args.bundle else train_and_export("rf", args.config_dir,
                                                                               workdir / "train")
            store = workdir / "store"
            shutil.copytree(source, store / source.name)
            releases = Releases(store, source.name, add_candidate(store / source.name, store, signing), signing)
            releases.switch(shadow=False)
            columns = model_columns(source)
            body_file = workdir / "one-row.json"
            body_file.write_bytes(dataframe_split(columns, payload_rows(args.config_dir, columns, 1)))
            spec = ServerSpec("ours", "", "ours", args.workers, {"SERVING_PUBLIC_KEY": str(signing.public_key)})
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd, env = server_command(spec, store / source.name, port, workdir)
            logfile = workdir / "server.log"
            proc = groups.start(cmd, env, logfile)
            wait_ready(proc, f"{url}/ready", logfile)
            load = wait_until_idle(60)
            log.info("other processes use %.2f cores before the runs", load or 0.0)
            for _ in range(args.rounds):
                for shadow in (False, True):
                    releases.switch(shadow, url)
                    runs.append(one_run(groups, url, proc.pid, body_file, shadow, args, workdir))
            groups.stop(proc)
    except BenchmarkError as exc:
        log.error("%s", exc)
        return 1
    finally:
        groups.stop_all()
    summary = summarize(runs)
    result = {"benchmark": "release_shadow", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_facts(), "other_cores_before": load,
              "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": summary}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"release-shadow-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    off, on = summary["off"], summary["shadow"]
    print(f"\n| single row, {args.connections} connections, median of {args.rounds} | req/s | p50 ms | p99 ms | "
          "server cores | server CPU ms/request | other processes, cores |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, row in (("no release", off), ("shadow, sample 1.0", on)):
        print(f"| {label} | {row['req_per_s']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
              f"{row['server_cores']:.2f} | {row['server_cpu_ms_per_req']:.3f} | {row['other_cores'] or 0:.2f} |")
    print(f"\nshadow / off: req/s {summary['ratio_on_off']:.3f} (cost {100 * summary['cost']:.1f} %), requests per "
          f"server CPU second {summary['cpu_ratio_on_off']:.3f} (cost {100 * summary['cpu_cost']:.1f} %); target "
          f"<= {100 * TARGET_COST:.0f} %: {'met' if summary['target_met'] else 'NOT met'}; the candidate scored "
          f"{100 * summary['scored_share']:.1f} % of the answered requests ({summary['dropped']:.0f} dropped); "
          f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
