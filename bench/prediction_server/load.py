"""The load drivers: wrk (closed loop, N connections) and an open-loop generator at a constant rate (latency
from the scheduled send time), each with the CPU the server, the driver and everything else used meanwhile;
the /health floor pairs; a plain HTTP call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    BenchmarkError,
    busy_cpu_seconds,
    wait_until_idle,
)
from bench.prediction_server.processes import ProcessGroups, group_cpu_seconds

log = logging.getLogger("bench.prediction_server")

IDLE_THRESHOLD_CORES = 0.3
WRK_SCRIPT = r"""
-- POSTs the file $BENCH_BODY_FILE to the URL (a GET without it); writes a JSON summary to $BENCH_RESULT_FILE.
if os.getenv("BENCH_BODY_FILE") ~= "" then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
  wrk.body = f:read("*a")
  f:close()
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_RESULT_FILE"), "w"))
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
  out:close()
end
"""


def http(method: str, url: str, body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run_wrk(groups: ProcessGroups, url: str, body_file: Path | None, connections: int, duration: float,
            workdir: Path, server_pgid: int) -> dict[str, Any]:
    """wrk -t1 (one load-generator thread: the machine has 2 cores) with the POST script (GET without a body);
    CPU use alongside."""
    script = workdir / "post.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    result_file = workdir / f"wrk-{time.monotonic_ns()}.json"
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file or ""), "BENCH_RESULT_FILE": str(result_file)}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "30s", "--latency",
           "-s", str(script), url]
    busy0, server0, wall0 = busy_cpu_seconds(), group_cpu_seconds(server_pgid), time.monotonic()
    out_file = workdir / "wrk.out"
    out_file.write_bytes(b"")
    proc = groups.start(cmd, env, out_file)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    groups.running.pop(proc.pid, None)
    wall = time.monotonic() - wall0
    server_cpu = group_cpu_seconds(server_pgid) - server0
    busy = (busy_cpu_seconds() or 0.0) - (busy0 or 0.0)
    if proc.returncode != 0 or not result_file.exists():
        raise BenchmarkError(f"wrk failed ({proc.returncode}): {out_file.read_text()[-2000:]}")
    summary = json.loads(result_file.read_text())
    wrk_cpu = usage.ru_utime + usage.ru_stime
    seconds = summary["duration_us"] / 1e6
    lat = summary["latency_us"]
    return {
        "requests": summary["requests"], "seconds": seconds, "req_per_s": summary["requests"] / seconds,
        "errors": summary["errors"], "p50_ms": lat["p50"] / 1e3, "p90_ms": lat["p90"] / 1e3,
        "p99_ms": lat["p99"] / 1e3, "p999_ms": lat["p999"] / 1e3, "max_ms": lat["max"] / 1e3,
        "mean_ms": lat["mean"] / 1e3, "server_cores": server_cpu / wall, "wrk_cores": wrk_cpu / wall,
        "other_cores": max(0.0, (busy - server_cpu - wrk_cpu) / wall) if busy0 is not None else None,
        "wrk_stdout": out_file.read_text(),
    }


async def _open_loop(port: int, body: bytes, rate: float, duration: float, warmup: float,
                     max_connections: int) -> dict[str, Any]:
    """Requests at a constant rate (uniform spacing); latency from the *scheduled* send time."""
    request = (f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = collections.deque()
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []
    send_lag: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    opened = 0

    async def exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, bool]:
        reader, writer = conn
        writer.write(request)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("connection closed by the server")
        status = int(status_line.split()[1])
        length, close = None, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise ValueError("response without Content-Length")
        await reader.readexactly(length)
        return status, close

    async def one(scheduled: float, measured: bool) -> None:
        nonlocal opened
        async with slots:
            if measured:
                send_lag.append(time.perf_counter() - scheduled)
            for attempt in range(2):  # a kept-alive connection the server closed meanwhile: one retry, fresh
                fresh = not idle
                if fresh:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                    opened += 1
                else:
                    conn = idle.popleft()
                try:
                    status, close = await exchange(conn)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    conn[1].close()
                    if fresh or attempt:
                        if measured:
                            statuses[type(exc).__name__] += 1
                        return
                    continue
                if measured:
                    latencies.append(time.perf_counter() - scheduled)
                    statuses[str(status)] += 1
                if close:
                    conn[1].close()
                else:
                    idle.append(conn)
                return

    total = duration + warmup
    n = int(rate * total)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled, i / rate >= warmup)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    latencies.sort()
    send_lag.sort()

    def pct(values: list[float], q: float) -> float | None:
        return values[min(len(values) - 1, int(len(values) * q))] * 1e3 if values else None

    measured_n = sum(1 for i in range(n) if i / rate >= warmup)
    return {"rate": rate, "seconds": duration, "scheduled": measured_n, "completed": len(latencies),
            "statuses": dict(statuses), "connections_opened": opened,
            "achieved_req_per_s": len(latencies) / duration, "p50_ms": pct(latencies, 0.50),
            "p90_ms": pct(latencies, 0.90), "p99_ms": pct(latencies, 0.99), "p999_ms": pct(latencies, 0.999),
            "max_ms": latencies[-1] * 1e3 if latencies else None, "send_lag_p99_ms": pct(send_lag, 0.99),
            "elapsed_s": elapsed}


def open_loop(port: int, body: bytes, rate: float, duration: float, warmup: float, server_pgid: int,
              max_connections: int = 64) -> dict[str, Any]:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    busy0, server0, wall0 = busy_cpu_seconds(), group_cpu_seconds(server_pgid), time.monotonic()
    self0 = time.process_time()
    # The generator's own garbage collections (its tasks and coroutines: tens of thousands of objects)
    # paused it for 13-26 ms, and every answer arriving meanwhile counted that pause as server latency.
    gc.collect()
    gc.disable()
    try:
        result = runner(_open_loop(port, body, rate, duration, warmup, max_connections))
    finally:
        gc.enable()
    wall = time.monotonic() - wall0
    server_cpu = group_cpu_seconds(server_pgid) - server0
    own = time.process_time() - self0
    busy = (busy_cpu_seconds() or 0.0) - (busy0 or 0.0)
    result.update(server_cores=server_cpu / wall, generator_cores=own / wall,
                  other_cores=max(0.0, (busy - server_cpu - own) / wall) if busy0 is not None else None)
    return result


def floor_pairs(groups: ProcessGroups, port: int, url: str, body_file: Path, args: argparse.Namespace,
                workdir: Path, pid: int) -> list[dict[str, Any]]:
    """The server's own floor, GET /health, and single-row /invocations at the same load, one right after the
    other, `args.floor_rounds` times: a shared machine's speed drifts by more than the gap between two runs
    minutes apart, so each pair gives a ratio. Sorted by ratio (the median pair decides)."""
    health = f"http://127.0.0.1:{port}/health"
    wait_until_idle(args.idle_timeout, IDLE_THRESHOLD_CORES)
    run_wrk(groups, health, None, args.connections, args.warmup, workdir, pid)
    pairs = []
    for _ in range(max(1, args.floor_rounds)):
        wait_until_idle(args.idle_timeout, IDLE_THRESHOLD_CORES)
        floor = run_wrk(groups, health, None, args.connections, args.duration, workdir, pid)
        predict = run_wrk(groups, url, body_file, args.connections, args.duration, workdir, pid)
        pairs.append({"health": floor, "invocations": predict, "ratio": predict["req_per_s"] / floor["req_per_s"]})
        log.info("  /health %.1f req/s (p99 %.1f ms), then 1-row /invocations %.1f req/s: %.2f×", floor["req_per_s"],
                 floor["p99_ms"], predict["req_per_s"], pairs[-1]["ratio"])
    return sorted(pairs, key=lambda pair: pair["ratio"])
