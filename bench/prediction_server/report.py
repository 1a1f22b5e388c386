"""The report: the issue's targets, each measured as a ratio and met or not, and the Markdown tables."""

from __future__ import annotations

from typing import Any

from bench.prediction_server.models import PAYLOAD_ROWS

# Targets from the issue.
TARGET_VS_DEFAULT = 10.0  # single-row req/s vs `mlflow models serve` with its defaults (issue 14; was 3)
TARGET_VS_MLSERVER = 8.0  # single-row req/s vs MLServer with adaptive batching, and a lower p99
TARGET_OF_HEALTH = 0.7  # single-row /invocations req/s vs the same server's /health at the same concurrency
TARGET_VS_EQUAL = 1.5  # single-row req/s vs `mlflow models serve -w <our workers>`
TARGET_BATCHING = 10.0  # RandomForest, 16 clients, micro-batching vs mlflow defaults
TARGET_P99_FACTOR = 3.0  # p99 at half of our max throughput vs the in-process predict time


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(result: dict[str, Any], connections: int) -> list[dict[str, Any]]:
    servers = result["servers"]

    def rps(key: str, n: int = 1) -> float | None:
        return servers.get(key, {}).get("runs", {}).get(str(n), {}).get("req_per_s")

    out = []

    def add(name: str, measured: float | None, target: float, unit: str, higher_is_better: bool = True,
            note: str = "") -> None:
        met = None if measured is None else (measured >= target if higher_is_better else measured <= target)
        out.append({"target": name, "measured": measured, "threshold": target, "unit": unit, "met": met,
                    "note": note, "higher_is_better": higher_is_better})

    add("single-row req/s, ours ÷ mlflow defaults", _ratio(rps("ours"), rps("mlflow_default")), TARGET_VS_DEFAULT,
        "×")
    add("single-row req/s, ours ÷ mlflow at equal workers", _ratio(rps("ours"), rps("mlflow_equal")),
        TARGET_VS_EQUAL, "×")
    add("single-row req/s without batching, ours ÷ mlflow defaults", _ratio(rps("ours_nobatch"),
        rps("mlflow_default")), TARGET_VS_DEFAULT, "×", note="informative: the target above without micro-batching")
    add("single-row req/s without batching, ours ÷ mlflow at equal workers",
        _ratio(rps("ours_nobatch"), rps("mlflow_equal")), TARGET_VS_EQUAL, "×", note="informative")
    if result["model"] == "rf":
        add(f"micro-batching, {connections} clients, ours ÷ mlflow defaults",
            _ratio(rps("ours"), rps("mlflow_default")), TARGET_BATCHING, "×",
            note="" if connections == 16 else "the target is stated for 16 clients")
    floor = servers.get("ours", {}).get("floor") or []
    if floor:
        pair, ratios = floor[len(floor) // 2], ", ".join(f"{p['ratio']:.2f}" for p in floor)
        add(f"single-row /invocations ÷ /health req/s, ours, {connections} clients", pair["ratio"], TARGET_OF_HEALTH,
            "×", note=f"the median of {len(floor)} alternating pairs ({ratios}); its /health "
                      f"{pair['health']['req_per_s']:,.0f} req/s is the server's own floor")
    mlserver = servers.get("mlserver", {})
    p99s = (servers.get("ours", {}).get("runs", {}).get("1", {}).get("p99_ms"),
            mlserver.get("runs", {}).get("1", {}).get("p99_ms"))
    add(f"single-row req/s, ours ÷ MLServer, {connections} clients", _ratio(rps("ours"), rps("mlserver")),
        TARGET_VS_MLSERVER, "×", note=mlserver.get("label", "") + (
            f"; p99 ours {p99s[0]:.1f} ms vs {p99s[1]:.1f} ms" if None not in p99s else ""))
    if None not in p99s:
        add("single-row p99, MLServer ÷ ours", p99s[1] / p99s[0], 1.0, "×", note="lower p99 than MLServer")
    half = servers.get("ours", {}).get("half_load")
    ours = result["in_process"]["1"]["p50_ms"]
    stock = result["in_process"].get("stock", {}).get("1")  # absent in reports from before it was measured
    if half and half.get("p99_ms") is not None:
        at = f"p99 {half['p99_ms']:.1f} ms at {half['rate']:.0f} req/s"
        if stock:
            add("p99 at half of our max single-row throughput ÷ the model's own in-process predict (1 row, p50)",
                half["p99_ms"] / stock["p50_ms"], TARGET_P99_FACTOR, "×", higher_is_better=False,
                note=f"{at}; the fastest stock call, {stock['via']}: {stock['p50_ms']:.2f} ms")
        add("p99 at half of our max single-row throughput ÷ our server's in-process model path (1 row, p50)",
            half["p99_ms"] / ours, TARGET_P99_FACTOR, "×", higher_is_better=False,
            note=f"{at}; load_bundle(b).predict ({result['in_process'].get('engine', {}).get('name', 'sklearn')}): "
                 f"{ours:.2f} ms"
                 + ("; informative, the stricter reading" if stock else ""))
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_report(report: dict[str, Any]) -> str:
    lines = []
    conns = report["settings"]["connections"]
    for result in report["models"]:
        servers = result["servers"]
        lines += [f"### {result['label']}", "",
                  f"In-process predict, our server's model path (`load_bundle(b).predict`, p50 of "
                  f"{result['in_process']['1']['calls']} calls, the faster of default threads / OMP_NUM_THREADS=1): "
                  f"1 row {result['in_process']['1']['p50_ms']:.2f} ms, "
                  f"100 rows {result['in_process']['100']['p50_ms']:.2f} ms"
                  + "".join(f"; {k}: 1 row {v['1']['p50_ms']:.2f} ms" for k, v in result["in_process"].items()
                            if k.endswith(("threads", "thread"))) + ".", "",
                  *([f"The model's own in-process predict (stock; fastest of mlflow pyfunc, the Pipeline as trained "
                     f"and with n_jobs=1, over both thread settings): 1 row "
                     f"{result['in_process']['stock']['1']['p50_ms']:.2f} ms "
                     f"({result['in_process']['stock']['1']['via']}), 100 rows "
                     f"{result['in_process']['stock']['100']['p50_ms']:.2f} ms "
                     f"({result['in_process']['stock']['100']['via']}); 1 row by call: "
                     + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in
                                 result["in_process"]["stock"]["1"]["all"].items()) + ".", ""]
                    if "stock" in result["in_process"] else []),
                  f"wrk, 1 thread, {conns} connections, {report['settings']['duration']:.0f} s per row"
                  f"{', niceness ' + str(report['settings']['nice']) if report['settings'].get('nice') else ''}:", "",
                  "| rows/request | server | req/s | rows/s | p50 ms | p99 ms | errors | req/s ours ÷ this "
                  "| p99 this ÷ ours | CPU: server / wrk / other (cores) |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for n in PAYLOAD_ROWS:
            ours = servers.get("ours", {}).get("runs", {}).get(str(n))
            for key, entry in servers.items():
                run = entry["runs"].get(str(n))
                if run is None:
                    continue
                errors = sum(run["errors"].values())
                mine = key == "ours"
                vs = "—" if mine or not ours else f"{_ratio(ours['req_per_s'], run['req_per_s']):.2f}×"
                p99 = "—" if mine or not ours else f"{_ratio(run['p99_ms'], ours['p99_ms']):.2f}×"
                label = f"**{entry['label']}**" if mine else entry["label"]
                lines.append(f"| {n} | {label} | {_fmt(run['req_per_s'])} | {_fmt(run['rows_per_s'], 0)} | "
                             f"{_fmt(run['p50_ms'])} | {_fmt(run['p99_ms'])} | {errors} | {vs} | {p99} | "
                             f"{run['server_cores']:.2f} / {run['wrk_cores']:.2f} / "
                             f"{_fmt(run['other_cores'], 2)} |")
        floor = servers.get("ours", {}).get("floor")
        if floor:
            lines += ["", f"The server's own floor, GET /health on ours at the same {conns} connections, each run "
                          "followed by single-row /invocations (pairs sorted by ratio):", "",
                      "| /health req/s | /health p99 ms | /invocations req/s | /invocations p99 ms | ratio |",
                      "|---:|---:|---:|---:|---:|"]
            lines += [f"| {_fmt(p['health']['req_per_s'])} | {_fmt(p['health']['p99_ms'])} | "
                      f"{_fmt(p['invocations']['req_per_s'])} | {_fmt(p['invocations']['p99_ms'])} | "
                      f"{p['ratio']:.2f}× |" for p in floor]
        engine = result["in_process"].get("engine")
        if engine:
            lines += ["", f"Engine serving this model: {engine['name']}"
                          + (f" (fallback: {engine['reason']})" if engine["reason"] else "") + "."]
        halves = [(k, e["half_load"]) for k, e in servers.items() if e.get("half_load")]
        if halves:
            lines += ["", "Constant rate, 1 row, half of the server's own max req/s above (open loop, latency "
                      "from the scheduled send time):", "",
                      "| server | rate req/s | achieved | p50 ms | p99 ms | max ms | non-200 | generator lag p99 ms |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for key, half in halves:
                bad = sum(v for s, v in half["statuses"].items() if s != "200")
                lines.append(f"| {servers[key]['label']} | {half['rate']:.0f} | {half['achieved_req_per_s']:.0f} | "
                             f"{_fmt(half['p50_ms'])} | {_fmt(half['p99_ms'])} | {_fmt(half['max_ms'])} | {bad} | "
                             f"{_fmt(half['send_lag_p99_ms'])} |")
        lines += ["", "| target | measured | needed | met |", "|---|---:|---:|---|"]
        for t in result["targets"]:
            sign = "≥" if t.get("higher_is_better", t["target"].startswith(("single", "micro"))) else "≤"
            met = {True: "**yes**", False: "**no**", None: "n/a"}[t["met"]]
            note = f" ({t['note']})" if t["note"] else ""
            lines.append(f"| {t['target']}{note} | {_fmt(t['measured'], 2)}{t['unit']} | {sign} "
                         f"{t['threshold']:g}{t['unit']} | {met} |")
        lines.append("")
    return "\n".join(lines)
