#!/usr/bin/env python3
"""ekilibri benchmark harness: ekilibri against nginx and HAProxy on this machine.

Usage (from anywhere; the repository is found from this file's location):

    tools/bench/run                      # full run: 3 rounds, 5 s per measurement
    tools/bench/run --quick              # 1 round, 1 s per measurement (< 2 minutes)
    tools/bench/run --smoke --out DIR    # tiny run used by tests/bench_smoke.rs
    tools/bench/run --contenders nginx,ekilibri --rounds 5 --duration 10
    tools/bench/run --quick --syscalls   # also count the proxies' syscalls per request

What it does:
  1. installs missing tools (nginx-light, haproxy, wrk, nghttp2-client; strace and
     linux-perf with --syscalls) with apt-get, then `cargo build --release --bins`;
  2. starts N backends (`ekilibri-backend`, default 3) shared by every contender;
  3. starts the contenders, each with W workers (default 2) and its config written
     to OUT/configs/: direct (no proxy: the ceiling), ekilibri, nginx, haproxy
     (mode http) and haproxy-tcp (mode tcp, the layer-4 reference);
  4. runs the workloads, contenders interleaved (A B C, A B C, ...) over several
     rounds: small GETs at 16/64/256/1024 connections, a new connection per
     request, 16 KiB and 1 MiB responses, 1 MiB uploads (wrk -t2 for all of
     these), and open-loop latency with ekilibri-loadgen at 25/50/75/90% of the
     slowest proxy's best small-GET throughput measured in the same round;
  5. records req/s, MB/s, latency percentiles, the proxy's CPU time per request
     (utime+stime of all its processes and threads from /proc/PID/stat), its peak
     RSS (VmHWM summed over its processes, reset before every measurement) and
     error counts;
  6. writes OUT/results.json, OUT/report.md and OUT/chart.svg
     (OUT defaults to bench-results/<timestamp>/).

Every load run is bounded in time and aimed at 127.0.0.1 only. Every process
started here runs in its own process group and is killed on exit, error or
Ctrl-C. See tools/bench/README.md for the methodology.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ALL_CONTENDERS = ["direct", "ekilibri", "ekilibri-plain", "nginx", "haproxy", "haproxy-tcp"]
# ekilibri-plain: ekilibri with glommio's default rings (ring_setup_flags = []),
# to measure the io_uring setup flags in the same run. Not run by default.
DEFAULT_CONTENDERS = [c for c in ALL_CONTENDERS if c != "ekilibri-plain"]
PROXIES = ["ekilibri", "ekilibri-plain", "nginx", "haproxy", "haproxy-tcp"]
# --baseline LABEL=PATH: another ekilibri binary (an older commit) benched as
# contender "ekilibri@LABEL" with the same config as "ekilibri", so a change
# is compared with what it replaced in the same run, interleaved.
BASELINES: dict[str, Path] = {}
BASELINE_COLORS = ["#2ca02c", "#98df8a", "#17becf", "#9edae5"]
BASELINE = "nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
COLORS = {
    "direct": "#7f7f7f",
    "ekilibri": "#d62728",
    "ekilibri-plain": "#ff9896",
    "nginx": "#2ca02c",
    "haproxy": "#1f77b4",
    "haproxy-tcp": "#9467bd",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    title: str
    path: str
    connections: int
    tool: str = "wrk"  # "wrk" (closed loop) or "loadgen" (open loop)
    method: str = "GET"
    body_bytes: int = 0
    close: bool = False
    load_pct: int | None = None  # open loop: % of the slowest proxy's capacity
    concurrency_series: bool = False  # part of the small-GET concurrency sweep


def all_workloads() -> list[Workload]:
    w = [
        Workload(
            f"get-c{c}",
            f"small GET, keep-alive, {c} connections",
            "/",
            c,
            concurrency_series=True,
        )
        for c in (16, 64, 256, 1024)
    ]
    w += [
        Workload("close-c8", "small GET, new connection per request (Connection: close), 8 connections", "/", 8, close=True),
        Workload("bytes16k-c64", "16 KiB responses, 64 connections", "/bytes/16384", 64),
        Workload("bytes1m-c16", "1 MiB responses, 16 connections", "/bytes/1048576", 16),
        Workload("post1m-c16", "1 MiB POST uploads to /echo (echoed back), 16 connections", "/echo", 16, method="POST", body_bytes=1 << 20),
    ]
    w += [
        Workload(
            f"open-{p}",
            f"open loop (ekilibri-loadgen), {p}% of the slowest proxy's max small-GET req/s, 64 connections",
            "/",
            64,
            tool="loadgen",
            load_pct=p,
        )
        for p in (25, 50, 75, 90)
    ]
    return w


SMOKE_WORKLOADS = ["get-c16", "close-c8", "post1m-c16", "open-50"]


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class Procs:
    """Every process started by the harness, each in its own process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log_path: Path | None = None, cpus: str | None = None,
              env: dict | None = None, stdout=None) -> subprocess.Popen:
        if cpus:
            argv = ["taskset", "-c", cpus] + argv
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else out,
            stderr=out,
            start_new_session=True,
            env=env,
        )
        if log_path:
            out.close()
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        if p.returncode is not None:
            return p.returncode  # reaped earlier: its pid may belong to someone else now
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Members of the group (nginx workers, a stuck leader) keep the group id
        # reserved, so signalling the group only reaches our own processes.
        if group_members(p.pid):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            return p.wait(grace)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)
        self.procs.clear()


def group_members(pgid: int) -> list[int]:
    """Processes whose process group is pgid."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[2]) == pgid:
                out.append(int(d))
    return out


def descendants(pid: int) -> list[int]:
    """All descendants of pid, from /proc (nginx workers, haproxy's master-worker...)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime (all threads, live and exited) summed over pids."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / CLK_TCK


def reset_peak_rss(pids: list[int]) -> bool:
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            ok = False
    return ok


def peak_rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get_ok(port: int, path: str = "/", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
            return data.startswith(b"HTTP/1.") and data[9:12] == b"200"
    except OSError:
        return False


def wait_ready(port: int, proc: subprocess.Popen, what: str, log_path: Path | None,
               timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"{what} exited with status {proc.returncode} during start-up:\n{tail}")
        if http_get_ok(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer GET / with 200 on 127.0.0.1:{port} within {timeout:.0f}s")


# ---------------------------------------------------------------------------
# Contenders
# ---------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    port: int
    proc: subprocess.Popen | None = None
    config_path: Path | None = None
    log_path: Path | None = None

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid] + descendants(self.proc.pid)


def nginx_has(flag: str) -> bool:
    try:
        out = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10)
        return flag in (out.stdout + out.stderr)
    except (OSError, subprocess.TimeoutExpired):
        return False


def worker_cpus(workers: int, cpus_proxy: str | None) -> list[int]:
    """CPUs the proxies' workers are pinned to: the first `workers` CPUs allowed."""
    if cpus_proxy:
        allowed: list[int] = []
        for part in cpus_proxy.split(","):
            lo, _, hi = part.partition("-")
            allowed += range(int(lo), int(hi or lo) + 1)
    else:
        allowed = sorted(os.sched_getaffinity(0))
    return [allowed[i % len(allowed)] for i in range(workers)]


def haproxy_maxconn() -> int:
    """4096 (room for 1024 client + 1024 server connections), or less when the
    hard RLIMIT_NOFILE would not let HAProxy have two fds per connection."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 4096
    return max(256, min(4096, (hard - 100) // 2))


def write_configs(name: str, port: int, backends: list[int], workers: int, cfgdir: Path,
                  pin_cpus: list[int] | None = None) -> Path:
    """Writes a contender's config. pin_cpus: pin worker i to pin_cpus[i] (ekilibri
    pins its own workers one per CPU with pin_workers; this gives nginx and HAProxy
    the same layout). Without pin_cpus every contender's workers float."""
    servers = [f"127.0.0.1:{p}" for p in backends]
    if name in ("ekilibri", "ekilibri-plain") or name in BASELINES:
        # nginx keeps up to 256 idle upstream connections per worker in total;
        # ekilibri's pool_size is per backend per worker, so split the same budget.
        pool = max(1, math.ceil(256 / len(servers)))
        path = cfgdir / f"{name}.toml"
        path.write_text(
            "# ekilibri benchmark config (written by tools/bench/bench.py)\n"
            f'listen = "127.0.0.1:{port}"\n'
            f"workers = {workers}\n"
            f"servers = [{', '.join(json.dumps(s) for s in servers)}]\n"
            'strategy = "RoundRobin"\n'
            f"# idle keep-alive connections per backend per worker ({pool} x {len(servers)} = nginx's keepalive 256)\n"
            f"pool_size = {pool}\n"
            "connection_timeout = 5000\n"
            "read_timeout = 60000\n"
            "write_timeout = 60000\n"
            'health_check_path = "/health"\n'
            'admin_listen = ""\n'
            "# pinned like nginx/HAProxy when they are pinned (--no-pin-workers lets all float)\n"
            f"pin_workers = {'true' if pin_cpus else 'false'}\n"
            + ("# glommio's default rings, for comparison\nring_setup_flags = []\n"
               if name == "ekilibri-plain" else "")
        )
        return path
    if name == "nginx":
        prefix = cfgdir / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        temp_paths = [f"    client_body_temp_path {prefix}/client_body;", f"    proxy_temp_path {prefix}/proxy;"]
        for mod in ("fastcgi", "uwsgi", "scgi"):
            if not nginx_has(f"--without-http_{mod}_module"):
                temp_paths.append(f"    {mod}_temp_path {prefix}/{mod};")
        upstream = "\n".join(f"        server {s};" for s in servers)
        affinity = ""
        if pin_cpus:
            masks = " ".join(format(1 << c, "b") for c in pin_cpus)
            affinity = f"# one worker per CPU, like ekilibri's pinned workers\nworker_cpu_affinity {masks};\n"
        path = cfgdir / "nginx.conf"
        path.write_text(f"""# nginx benchmark config (written by tools/bench/bench.py)
worker_processes {workers};
{affinity}worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log /dev/null crit;

events {{
    worker_connections 16384;
}}

http {{
    access_log off;
{chr(10).join(temp_paths)}
    # client side keep-alive: never the limiting factor in a run
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_max_body_size 0;

    upstream backends {{
{upstream}
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Stream bodies like ekilibri and HAProxy do: no request spooling and
            # no temp files for large responses (in-memory buffers only).
            proxy_request_buffering off;
            proxy_buffer_size 16k;
            proxy_buffers 16 16k;
            proxy_max_temp_file_size 0;
            proxy_connect_timeout 5s;
            proxy_read_timeout 60s;
            proxy_send_timeout 60s;
        }}
    }}
}}
""")
        return path
    if name in ("haproxy", "haproxy-tcp"):
        mode = "http" if name == "haproxy" else "tcp"
        lines = [f"# HAProxy benchmark config, mode {mode} (written by tools/bench/bench.py)",
                 "global",
                 f"    nbthread {workers}",
                 f"    maxconn {haproxy_maxconn()}",
                 *(["    # one thread per CPU, like ekilibri's pinned workers",
                    f"    cpu-map auto:1/1-{workers} {' '.join(map(str, pin_cpus))}"]
                   if pin_cpus and len(set(pin_cpus)) == workers else []),
                 "    # no 'log' line: nothing is logged",
                 "",
                 "defaults",
                 f"    mode {mode}",
                 "    balance roundrobin",
                 "    timeout connect 5s",
                 "    timeout client 60s",
                 "    timeout server 60s"]
        if mode == "http":
            lines += ["    timeout http-keep-alive 60s",
                      "    option http-keep-alive",
                      "    http-reuse always"]
        lines += ["",
                  "frontend fe",
                  f"    bind 127.0.0.1:{port}",
                  "    default_backend be",
                  "",
                  "backend be"]
        lines += [f"    server b{i} {s}" for i, s in enumerate(servers)]
        path = cfgdir / f"{name}.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path
    raise ValueError(name)


def start_contender(name: str, procs: Procs, bins: Path, backends: list[int], workers: int,
                    outdir: Path, tag: str, cpus: str | None, pin_cpus: list[int] | None) -> Contender:
    logdir = outdir / "logs"
    cfgdir = outdir / "configs"
    if name == "direct":
        # wrk straight at the first backend: no proxy, the ceiling.
        return Contender(name, backends[0])
    port = free_port()
    cfg = write_configs(name, port, backends, workers, cfgdir, pin_cpus)
    log_path = logdir / f"{name}-{tag}.log"
    if name in ("ekilibri", "ekilibri-plain") or name in BASELINES:
        binary = BASELINES.get(name, bins / "ekilibri")
        argv = [str(binary), "-f", str(cfg), "--workers", str(workers)]
    elif name == "nginx":
        prefix = cfgdir / "nginx"
        argv = ["nginx", "-p", str(prefix), "-c", str(cfg), "-e", "/dev/null", "-g", "daemon off;"]
    else:
        argv = ["haproxy", "-db", "-f", str(cfg)]
    proc = procs.start(argv, log_path, cpus)
    c = Contender(name, port, proc, cfg, log_path)
    wait_ready(port, proc, name, log_path)
    return c


def start_backends(n: int, threads: int, procs: Procs, bins: Path, outdir: Path,
                   cpus: str | None) -> list[int]:
    ports = []
    for i in range(n):
        port = free_port()
        log_path = outdir / "logs" / f"backend-{port}.log"
        p = procs.start([str(bins / "ekilibri-backend"), "-p", str(port), "--threads", str(threads)],
                        log_path, cpus)
        wait_ready(port, p, f"ekilibri-backend on port {port}", log_path)
        ports.append(port)
    return ports


# ---------------------------------------------------------------------------
# Load tools
# ---------------------------------------------------------------------------

WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%.0f,"bytes":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,' ..
    '"p999_us":%.0f,"max_us":%.0f,"mean_us":%.1f}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def wrk_script(w: Workload, outdir: Path) -> Path:
    path = outdir / "scripts" / f"{w.name}.lua"
    if not path.exists():
        body = ""
        if w.method != "GET":
            body += f'wrk.method = "{w.method}"\n'
        if w.body_bytes:
            body += f'wrk.body = string.rep("x", {w.body_bytes})\n'
            body += 'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        path.write_text(f"-- {w.title} (written by tools/bench/bench.py)\n" + body + WRK_DONE)
    return path


def run_wrk(w: Workload, port: int, seconds: int, outdir: Path, cpus: str | None) -> dict:
    threads = min(2, w.connections)
    argv = ["wrk", f"-t{threads}", f"-c{w.connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(wrk_script(w, outdir))]
    if w.close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}{w.path}")
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    out = run_bounded(argv, seconds + 30)
    m = re.search(r"^WRK_JSON (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out[-2000:]}")
    r = json.loads(m.group(1))
    secs = max(r["duration_us"] / 1e6, 1e-9)
    socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {
        "tool": "wrk",
        "requests": int(r["requests"]),
        "seconds": secs,
        "rps": r["requests"] / secs,
        "mbps": r["bytes"] / secs / 1e6,
        "p50_us": r["p50_us"], "p90_us": r["p90_us"], "p99_us": r["p99_us"],
        "p999_us": r["p999_us"], "max_us": r["max_us"], "mean_us": r["mean_us"],
        "socket_errors": int(socket_errors),
        "non_2xx": int(r["status"]),  # wrk counts status >= 400
        "errors_detail": {k: int(r[k]) for k in ("connect", "read", "write", "timeout", "status")},
    }


def run_loadgen(w: Workload, port: int, rate: float, seconds: float, bins: Path,
                threads: int, cpus: str | None) -> dict:
    argv = [str(bins / "ekilibri-loadgen"), "--url", f"http://127.0.0.1:{port}{w.path}",
            "--rate", f"{rate:.0f}", "--duration", f"{seconds}s", "--connections", str(w.connections),
            "--threads", str(threads), "--json"]
    if w.method != "GET":
        argv += ["--method", w.method, "--body-bytes", str(w.body_bytes)]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    out = run_bounded(argv, seconds + 30)
    line = next((l for l in out.splitlines() if l.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"ekilibri-loadgen printed no result:\n{out[-2000:]}")
    r = json.loads(line)
    return {
        "tool": "ekilibri-loadgen",
        "requests": r["completed"],
        "seconds": r["duration_s"],
        "rps": r["achieved_rps"],
        "target_rps": r["target_rps"],
        "achieved_pct": 100.0 * r["achieved_rps"] / r["target_rps"] if r["target_rps"] else None,
        "mbps": r["bytes"] / r["duration_s"] / 1e6,
        "p50_us": r["p50_us"], "p90_us": r["p90_us"], "p99_us": r["p99_us"],
        "p999_us": r["p999_us"], "max_us": r["max_us"], "mean_us": r["mean_us"],
        "socket_errors": r["errors"],
        "non_2xx": r["non_2xx"],
        "unsent": r["unsent"],
        "gen_lag_p99_us": r.get("timer_lag_p99_us"),
        "errors_detail": {k: r[k] for k in ("connect_errors", "io_errors", "timeouts", "parse_errors", "unsent")},
    }


def run_bounded(argv: list[str], timeout: float) -> str:
    """Runs a load tool in its own process group; kills the group on timeout."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        out, _ = p.communicate(timeout=timeout)
    except BaseException:
        Procs.stop(p, grace=1)
        raise
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {p.returncode}:\n{out[-2000:]}")
    return out


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class Settings:
    contenders: list[str]
    workloads: list[Workload]
    rounds: int
    duration: int
    warmup: int
    workers: int
    backends: int
    backend_threads: int
    loadgen_threads: int
    cpus_proxy: str | None
    cpus_client: str | None
    cpus_backend: str | None
    syscalls: bool
    mode: str
    pin_cpus: list[int] | None


def measure(c: Contender, w: Workload, s: Settings, outdir: Path, bins: Path,
            backend_pids: list[int], rate: float | None) -> dict:
    def load(seconds: int | float) -> dict:
        if w.tool == "wrk":
            return run_wrk(w, c.port, int(seconds), outdir, s.cpus_client)
        return run_loadgen(w, c.port, rate, seconds, bins, s.loadgen_threads, s.cpus_client)

    if s.warmup > 0:
        load(s.warmup)
    pids = c.pids()
    if c.proc is not None and not pids:
        raise RuntimeError(f"{c.name} is no longer running (see {c.log_path})")
    rss_reset = reset_peak_rss(pids)
    cpu0, bcpu0 = cpu_seconds(pids), cpu_seconds(backend_pids)
    r = load(s.duration)
    cpu1, bcpu1 = cpu_seconds(pids), cpu_seconds(backend_pids)
    r["backend_cpu_s"] = bcpu1 - bcpu0
    if pids:
        cpu = cpu1 - cpu0
        r["proxy_cpu_s"] = cpu
        r["cpu_us_per_req"] = cpu / r["requests"] * 1e6 if r["requests"] else None
        r["req_per_cpu_s"] = r["requests"] / cpu if cpu > 0 else None
        r["peak_rss_kb"] = peak_rss_kb(pids)
        r["peak_rss_reset"] = rss_reset
        r["proxy_processes"] = len(pids)
    else:
        r.update(proxy_cpu_s=None, cpu_us_per_req=None, req_per_cpu_s=None, peak_rss_kb=None)
    return r


def run_rounds(s: Settings, procs: Procs, bins: Path, outdir: Path, results: dict) -> None:
    backend_pids: list[int] = []
    ports = start_backends(s.backends, s.backend_threads, procs, bins, outdir, s.cpus_backend)
    for p in procs.procs[-s.backends:]:
        backend_pids += [p.pid] + descendants(p.pid)
    results["meta"]["backend_ports"] = ports
    warm = Workload("warmup", "warm-up", "/", 64)
    for rnd in range(s.rounds):
        k = rnd % len(s.contenders)
        order = s.contenders[k:] + s.contenders[:k]  # rotate who goes first
        log(f"round {rnd + 1}/{s.rounds}: order {' '.join(order)}")
        running: dict[str, Contender] = {}
        capacity: dict[str, float] = {}
        try:
            for name in order:
                running[name] = start_contender(name, procs, bins, ports, s.workers, outdir,
                                                f"r{rnd + 1}", s.cpus_proxy, s.pin_cpus)
                # A first warm-up so connection pools and caches are populated.
                run_wrk(warm, running[name].port, 1, outdir, s.cpus_client)
            for w in s.workloads:
                rate = None
                if w.tool == "loadgen":
                    proxies = {k2: v for k2, v in capacity.items() if k2 != "direct"} or capacity
                    if not proxies:
                        raise RuntimeError("open-loop workloads need a small-GET workload first")
                    slowest = min(proxies.values())
                    rate = max(1.0, slowest * w.load_pct / 100)
                    results["capacity"][f"round{rnd + 1}"] = {"max_get_rps": capacity, "slowest_proxy_rps": slowest}
                for name in order:
                    c = running[name]
                    r = measure(c, w, s, outdir, bins, backend_pids, rate)
                    r.update(round=rnd + 1, contender=name, workload=w.name)
                    results["runs"].append(r)
                    if w.concurrency_series:
                        capacity[name] = max(capacity.get(name, 0.0), r["rps"])
                    log(f"  {w.name:<13} {name:<12} {r['rps']:>10.0f} req/s  p99 {r['p99_us'] / 1000:8.2f} ms"
                        f"  errors {r['socket_errors']}/{r['non_2xx']}"
                        + (f"  cpu {r['cpu_us_per_req']:.1f} us/req" if r.get("cpu_us_per_req") else ""))
                    write_results(results, outdir)
        finally:
            for name, c in running.items():
                if c.proc is not None:
                    rc = Procs.stop(c.proc)
                    results["exits"].append({"round": rnd + 1, "contender": name, "exit_status": rc})
    if s.syscalls:
        run_syscalls(s, procs, bins, outdir, ports, results)


# Syscalls counted one by one at partial load, beside the total: the ones an
# event loop pays per pass (io_uring_enter for glommio, epoll_wait for nginx
# and HAProxy) and glommio's park-time membarrier.
PARTIAL_LOAD_EVENTS = ["io_uring_enter", "epoll_wait", "epoll_pwait", "membarrier"]


def traced(argv: list[str], settle: float, wait_s: float, run):
    """Runs `run()` while the tracer `argv` (perf stat, strace) is attached:
    starts it, gives it `settle` seconds to attach, then stops it with SIGINT
    (so it writes its counts), waiting up to `wait_s` seconds. Returns what
    `run()` returned."""
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    time.sleep(settle)
    try:
        return run()
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(wait_s)
        except subprocess.TimeoutExpired:
            Procs.stop(tracer, 1)


def perf_counts(pids: str, events: list[str], out: Path, run) -> tuple[dict, dict]:
    """Runs `run()` under `perf stat -e EVENTS -p PIDS` and returns (its
    result, the counts by event name). Events perf does not know make it
    exit at once with no counts; the caller then gets an empty dict."""
    r = traced(["perf", "stat", "-x", ",", "-o", str(out), "-e", ",".join(events), "-p", pids],
               0.3, 10, run)
    counts = {}
    for line in out.read_text().splitlines() if out.exists() else []:
        parts = line.split(",")
        if len(parts) > 2 and parts[0].strip().isdigit():
            counts[parts[2]] = int(parts[0])
    return r, counts


def run_syscalls(s: Settings, procs: Procs, bins: Path, outdir: Path, ports: list[int],
                 results: dict) -> None:
    """Counts the proxy's syscalls during one small-GET run (perf stat), then the
    breakdown by syscall (strace -c, which slows the proxy down a lot). Then,
    with perf, the same at half the slowest proxy's small-GET rate (open
    loop), where an event loop makes a pass per request or two and its
    per-pass syscalls show."""
    w = next((x for x in all_workloads() if x.name == "get-c64"))
    secs = max(1, min(s.duration, 5))
    out: dict[str, Any] = {}
    names = [c for c in s.contenders if c != "direct"]
    for name in names:
        c = start_contender(name, procs, bins, ports, s.workers, outdir, "syscalls", s.cpus_proxy,
                            s.pin_cpus)
        try:
            run_wrk(w, c.port, 1, outdir, s.cpus_client)
            pids = ",".join(map(str, c.pids()))
            entry: dict[str, Any] = {}
            if shutil.which("perf"):
                r, counts = perf_counts(pids, ["raw_syscalls:sys_enter", "context-switches"],
                                        outdir / "logs" / f"perf-{name}.txt",
                                        lambda: run_wrk(w, c.port, secs, outdir, s.cpus_client))
                n = max(r["requests"], 1)
                entry["perf"] = {
                    "requests": r["requests"], "rps": r["rps"],
                    "syscalls": counts.get("raw_syscalls:sys_enter"),
                    "context_switches": counts.get("context-switches"),
                    "syscalls_per_req": counts["raw_syscalls:sys_enter"] / n if "raw_syscalls:sys_enter" in counts else None,
                    "context_switches_per_req": counts["context-switches"] / n if "context-switches" in counts else None,
                }
            if shutil.which("strace"):
                st_out = outdir / "logs" / f"strace-{name}.txt"
                argv = ["strace", "-c", "-f", "-o", str(st_out)]
                for pid in c.pids():
                    argv += ["-p", str(pid)]
                r = traced(argv, 0.5, 20, lambda: run_wrk(w, c.port, secs, outdir, s.cpus_client))
                n = max(r["requests"], 1)
                top = []
                for line in st_out.read_text().splitlines():
                    m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+\s+)?(\w+)\s*$", line)
                    if m and m.group(3) != "total":
                        top.append({"syscall": m.group(3), "calls": int(m.group(1)), "per_req": int(m.group(1)) / n})
                top.sort(key=lambda x: -x["calls"])
                entry["strace"] = {"requests": r["requests"], "rps_under_strace": r["rps"], "top": top[:8],
                                   "syscalls_per_req": sum(t["calls"] for t in top) / n}
            out[name] = entry
            log(f"  syscalls {name}: {json.dumps(entry.get('perf', {}))}")
        finally:
            Procs.stop(c.proc)
    results["syscalls"] = {"workload": w.name, "seconds": secs, "by_contender": out}

    full = [e["perf"]["rps"] for e in out.values() if e.get("perf", {}).get("rps")]
    if not full or not shutil.which("perf"):
        return
    rate = 0.5 * min(full)
    lw = replace(w, name="open-50-syscalls", tool="loadgen")
    events = ["raw_syscalls:sys_enter", "context-switches"] + [f"syscalls:sys_enter_{e}" for e in PARTIAL_LOAD_EVENTS]
    partial: dict[str, Any] = {}
    for name in names:
        c = start_contender(name, procs, bins, ports, s.workers, outdir, "syscalls-partial", s.cpus_proxy,
                            s.pin_cpus)
        try:
            run_wrk(w, c.port, 1, outdir, s.cpus_client)
            pids = c.pids()
            cpu0 = cpu_seconds(pids)
            r, counts = perf_counts(",".join(map(str, pids)), events,
                                    outdir / "logs" / f"perf-partial-{name}.txt",
                                    lambda: run_loadgen(lw, c.port, rate, secs, bins, s.loadgen_threads,
                                                        s.cpus_client))
            cpu = cpu_seconds(pids) - cpu0
            n = max(r["requests"], 1)
            partial[name] = {
                "requests": r["requests"], "rps": r["rps"], "p99_us": r["p99_us"],
                "cpu_us_per_req": cpu / n * 1e6,
                "syscalls_per_req": counts["raw_syscalls:sys_enter"] / n if "raw_syscalls:sys_enter" in counts else None,
                "context_switches_per_req": counts["context-switches"] / n if "context-switches" in counts else None,
                "per_req": {e: counts[f"syscalls:sys_enter_{e}"] / n
                            for e in PARTIAL_LOAD_EVENTS if f"syscalls:sys_enter_{e}" in counts},
            }
            log(f"  syscalls at {rate:.0f} req/s {name}: {json.dumps(partial[name])}")
        finally:
            Procs.stop(c.proc)
    results["syscalls"]["partial"] = {"rate": rate, "seconds": secs, "by_contender": partial}


# ---------------------------------------------------------------------------
# Summaries and outputs
# ---------------------------------------------------------------------------

METRICS = ["rps", "mbps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "cpu_us_per_req",
           "req_per_cpu_s", "peak_rss_kb", "proxy_cpu_s", "backend_cpu_s", "target_rps", "unsent",
           "gen_lag_p99_us", "achieved_pct"]


def median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(results: dict) -> None:
    runs = results["runs"]
    for r in runs:
        if r.get("target_rps") and r.get("achieved_pct") is None:
            r["achieved_pct"] = 100.0 * r["rps"] / r["target_rps"]
    summary: dict[str, dict[str, dict]] = {}
    for w in dict.fromkeys(r["workload"] for r in runs):
        summary[w] = {}
        for c in dict.fromkeys(r["contender"] for r in runs if r["workload"] == w):
            rs = [r for r in runs if r["workload"] == w and r["contender"] == c]
            m: dict[str, Any] = {k: median([r.get(k) for r in rs]) for k in METRICS}
            m["rounds"] = len(rs)
            m["requests"] = sum(r["requests"] for r in rs)
            m["socket_errors"] = sum(r["socket_errors"] for r in rs)
            m["non_2xx"] = sum(r["non_2xx"] for r in rs)
            # Ratio to nginx, per round (the two were measured minutes apart at most), then the median.
            ratios: dict[str, Any] = {}
            for k in ("rps", "p99_us", "cpu_us_per_req", "peak_rss_kb"):
                per_round = []
                for r in rs:
                    b = next((x for x in runs if x["workload"] == w and x["contender"] == BASELINE
                              and x["round"] == r["round"]), None)
                    if b and r.get(k) is not None and b.get(k):
                        per_round.append(r[k] / b[k])
                ratios[k] = median(per_round)
            m["vs_nginx"] = ratios
            summary[w][c] = m
    results["summary"] = summary
    totals: dict[str, dict] = {}
    for r in runs:
        t = totals.setdefault(r["contender"], {"requests": 0, "socket_errors": 0, "non_2xx": 0, "runs": 0})
        t["requests"] += r["requests"]
        t["socket_errors"] += r["socket_errors"]
        t["non_2xx"] += r["non_2xx"]
        t["runs"] += 1
    results["totals"] = totals


def write_results(results: dict, outdir: Path) -> None:
    tmp = outdir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False))
    tmp.replace(outdir / "results.json")


def fmt(v: Any, scale: float = 1.0, digits: int = 0) -> str:
    if v is None:
        return "–"
    v = v * scale
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def write_report(results: dict, outdir: Path) -> None:
    meta = results["meta"]
    wl = {w.name: w for w in all_workloads()}
    L = [f"# ekilibri benchmark — {meta['started']}", ""]
    L.append(f"Command: `{meta['command']}`  ")
    L.append(f"Machine: {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['mem_gib']} GiB, Linux {meta['kernel']}  ")
    L.append("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "  ")
    L.append(f"Settings: {meta['workers']} workers per proxy, {meta['backends']} × ekilibri-backend "
             f"(--threads {meta['backend_threads']}), {meta['rounds']} round(s), {meta['duration_s']} s per "
             f"measurement after {meta['warmup_s']} s warm-up, contenders interleaved (order rotated per round). "
             f"Pinning: {meta['pinning']}.  ")
    caps = results.get("capacity", {})
    if caps:
        slow = median([v["slowest_proxy_rps"] for v in caps.values()])
        L.append(f"Open-loop rates are percentages of the slowest proxy's best small-GET req/s in the same round "
                 f"(median {fmt(slow)} req/s).  ")
    L.append("Values are medians over rounds; “vs nginx” is the median of per-round ratios to nginx. "
             "Latencies in ms (wrk: p99.9 from its `done()` hook; open loop: from the intended send time). "
             "CPU is the proxy's utime+stime per request (all processes/threads); RSS is peak VmHWM during the "
             "measurement, summed over the proxy's processes. Errors: socket errors / non-2xx responses. "
             "MB/s counts response bytes read by the client. direct = no proxy (wrk at one backend).")
    L.append("")
    summ = results.get("summary", {})
    cols = [c for c in ALL_CONTENDERS if any(c in by_c for by_c in summ.values())]
    if summ:
        L.append("## Overview")
        L.append("")
        L.append("Closed-loop rows: req/s (ratio to nginx). Open-loop rows: p99 latency in ms (ratio to nginx). "
                 "Values are medians over rounds; a ratio is the median of the per-round ratios (each round "
                 "measures the contenders back to back, and open-loop rates are set per round), so with noisy "
                 "rounds it can differ from the ratio of the medians shown.")
        L.append("")
        L.append("| workload | " + " | ".join(cols) + " |")
        L.append("|---|" + "--:|" * len(cols))
        for wname, by_c in summ.items():
            w = wl.get(wname)
            cells = []
            for c in cols:
                m = by_c.get(c)
                if m is None:
                    cells.append("–")
                elif w and w.tool == "loadgen":
                    cells.append(f"{fmt(m['p99_us'], 1e-3, 2)} ({fmt_ratio(m['vs_nginx']['p99_us'])})")
                else:
                    cells.append(f"{fmt(m['rps'])} ({fmt_ratio(m['vs_nginx']['rps'])})")
            L.append(f"| {wname} | " + " | ".join(cells) + " |")
        L.append("")
        L.append("## Details")
        L.append("")
    for wname, by_c in summ.items():
        w = wl.get(wname)
        L.append(f"### {wname} — {w.title if w else ''}")
        L.append("")
        if w and w.tool == "loadgen":
            L.append("| contender | target req/s | achieved | unsent | p50 ms | p99 ms | p99.9 ms | max ms "
                     "| p99 vs nginx | CPU µs/req | req/CPU-s | peak RSS MiB | errors | generator lag p99 ms |")
            L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
            for c, m in by_c.items():
                L.append(f"| {c} | {fmt(m['target_rps'])} | {fmt(m['achieved_pct'], 1, 1)}{'%' if m['achieved_pct'] is not None else ''} | {fmt(m['unsent'])} | "
                         f"{fmt(m['p50_us'], 1e-3, 2)} | "
                         f"{fmt(m['p99_us'], 1e-3, 2)} | {fmt(m['p999_us'], 1e-3, 2)} | {fmt(m['max_us'], 1e-3, 2)} | "
                         f"{fmt_ratio(m['vs_nginx']['p99_us'])} | {fmt(m['cpu_us_per_req'], 1, 1)} | "
                         f"{fmt(m['req_per_cpu_s'])} | {fmt(m['peak_rss_kb'], 1 / 1024, 1)} | "
                         f"{m['socket_errors']} / {m['non_2xx']} | {fmt(m['gen_lag_p99_us'], 1e-3, 2)} |")
        else:
            L.append("| contender | req/s | vs nginx | MB/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | CPU vs nginx "
                     "| req/CPU-s | peak RSS MiB | errors |")
            L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
            for c, m in by_c.items():
                L.append(f"| {c} | {fmt(m['rps'])} | {fmt_ratio(m['vs_nginx']['rps'])} | {fmt(m['mbps'], 1, 1)} | "
                         f"{fmt(m['p50_us'], 1e-3, 2)} | {fmt(m['p99_us'], 1e-3, 2)} | {fmt(m['p999_us'], 1e-3, 2)} | "
                         f"{fmt(m['cpu_us_per_req'], 1, 1)} | {fmt_ratio(m['vs_nginx']['cpu_us_per_req'])} | "
                         f"{fmt(m['req_per_cpu_s'])} | {fmt(m['peak_rss_kb'], 1 / 1024, 1)} | "
                         f"{m['socket_errors']} / {m['non_2xx']} |")
        L.append("")
    sc = results.get("syscalls")
    if sc:
        L.append(f"### Syscalls per request ({sc['workload']}, {sc['seconds']} s)")
        L.append("")
        L.append("`perf stat -e raw_syscalls:sys_enter,context-switches -p PIDS` during a wrk run (low overhead); "
                 "the breakdown comes from a second run under `strace -c -f` (much slower, counts only). "
                 "io_uring operations submitted through the ring are not syscalls and are not counted.")
        L.append("")
        L.append("| contender | req/s under perf | syscalls/req | ctx switches/req | top syscalls per request (strace) |")
        L.append("|---|--:|--:|--:|---|")
        for c, e in sc["by_contender"].items():
            p = e.get("perf", {})
            top = ", ".join(f"{t['syscall']} {t['per_req']:.2f}" for t in e.get("strace", {}).get("top", [])[:5])
            L.append(f"| {c} | {fmt(p.get('rps'))} | {fmt(p.get('syscalls_per_req'), 1, 2)} | "
                     f"{fmt(p.get('context_switches_per_req'), 1, 3)} | {top or '–'} |")
        L.append("")
        part = sc.get("partial")
        if part and part["by_contender"]:
            L.append(f"At half load: {fmt(part['rate'])} req/s (half the slowest proxy's rate above), open loop "
                     f"(ekilibri-loadgen), {part['seconds']} s, `perf stat` with one tracepoint per syscall named. "
                     "An event loop makes about a pass per request here, so what it pays per pass shows.")
            L.append("")
            L.append("| contender | CPU µs/req | syscalls/req | ctx switches/req | "
                     + " | ".join(f"{e}/req" for e in PARTIAL_LOAD_EVENTS) + " |")
            L.append("|---|--:|--:|--:|" + "--:|" * len(PARTIAL_LOAD_EVENTS))
            for c, e in part["by_contender"].items():
                L.append(f"| {c} | {fmt(e.get('cpu_us_per_req'), 1, 1)} | {fmt(e.get('syscalls_per_req'), 1, 2)} | "
                         f"{fmt(e.get('context_switches_per_req'), 1, 3)} | "
                         + " | ".join(fmt(e.get('per_req', {}).get(x), 1, 2) for x in PARTIAL_LOAD_EVENTS) + " |")
            L.append("")
    bad_exits = [e for e in results.get("exits", []) if e["exit_status"] not in (0, -signal.SIGTERM)]
    if bad_exits:
        L.append("Unexpected exit statuses after SIGTERM: "
                 + ", ".join(f"{e['contender']} (round {e['round']}): {e['exit_status']}" for e in bad_exits))
        L.append("")
    L.append("Configs: `configs/` in this directory. Raw numbers per round: `results.json`. "
             "Methodology: `tools/bench/README.md`.")
    (outdir / "report.md").write_text("\n".join(L) + "\n")


def write_chart(results: dict, outdir: Path) -> None:
    """Two panels: small-GET req/s and p99 latency against the number of connections."""
    series = [w for w in all_workloads() if w.concurrency_series]
    summary = results.get("summary", {})
    xs = [w.connections for w in series if w.name in summary]
    contenders = [c for c in ALL_CONTENDERS if any(c in summary.get(w.name, {}) for w in series)]
    W, H, PW, PH = 980, 440, 380, 300
    panels = [("Throughput (req/s, higher is better)", "rps", 1.0, False, 70),
              ("p99 latency (ms, log scale, lower is better)", "p99_us", 1e-3, True, 70 + PW + 110)]
    top = 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
           f'Small GET, keep-alive: {results["meta"]["workers"]} workers per proxy, medians of '
           f'{results["meta"]["rounds"]} round(s) ({results["meta"]["started"]})</text>']
    if not xs:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no small-GET results</text></svg>')
        (outdir / "chart.svg").write_text("\n".join(out) + "\n")
        return
    for title, key, scale, logy, left in panels:
        vals = [summary[w][c][key] * scale for w in [x.name for x in series if x.name in summary]
                for c in contenders if c in summary[w] and summary[w][c].get(key)]
        if not vals:
            continue
        if logy:
            lo = 10 ** math.floor(math.log10(min(vals)))
            hi = 10 ** math.ceil(math.log10(max(vals)))
            if hi <= lo:
                hi = lo * 10
            ticks = []
            t = lo
            while t <= hi * 1.0001:
                ticks.append(t)
                t *= 10
            def ymap(v, lo=lo, hi=hi):
                return top + PH - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * PH
        else:
            lo = 0.0
            step = nice_step(max(vals) / 5)
            hi = step * math.ceil(max(vals) * 1.05 / step)
            ticks = [i * step for i in range(int(round(hi / step)) + 1)]
            def ymap(v, hi=hi):
                return top + PH - v / hi * PH
        def xmap(i):
            return left + (i + 0.5) * PW / len(xs)
        out.append(f'<text x="{left + PW / 2}" y="{top - 14}" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<rect x="{left}" y="{top}" width="{PW}" height="{PH}" fill="none" stroke="#333"/>')
        for t in ticks:
            y = ymap(t)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + PW}" y2="{y:.1f}" stroke="#ddd"/>')
            label = f"{t:,.0f}" if t >= 1 else f"{t:g}"
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for i, x in enumerate(xs):
            out.append(f'<text x="{xmap(i):.1f}" y="{top + PH + 18}" text-anchor="middle">{x}</text>')
        out.append(f'<text x="{left + PW / 2}" y="{top + PH + 36}" text-anchor="middle">connections (wrk -t2)</text>')
        for c in contenders:
            pts = []
            for i, w in enumerate(x.name for x in series if x.name in summary):
                v = summary[w].get(c, {}).get(key)
                if v:
                    pts.append((xmap(i), ymap(v * scale)))
            if not pts:
                continue
            color = COLORS.get(c, "#000")
            dash = ' stroke-dasharray="5,4"' if c in ("direct", "haproxy-tcp") else ""
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
            for x, y in pts:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>')
    lx = 70
    for c in contenders:
        color = COLORS.get(c, "#000")
        out.append(f'<rect x="{lx}" y="{H - 22}" width="14" height="4" fill="{color}"/>')
        out.append(f'<text x="{lx + 20}" y="{H - 16}">{c}</text>')
        lx += 30 + 8 * len(c) + 20
    out.append("</svg>")
    (outdir / "chart.svg").write_text("\n".join(out) + "\n")


def nice_step(x: float) -> float:
    if x <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if x <= m * e:
            return m * e
    return 10 * e


# ---------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------


def ensure_tools(need_syscalls: bool, install: bool) -> None:
    wanted = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk", "h2load": "nghttp2-client"}
    if need_syscalls:
        wanted.update({"strace": "strace", "perf": "linux-perf"})
    missing = [pkg for binary, pkg in wanted.items() if not shutil.which(binary)
               and not Path(f"/usr/sbin/{binary}").exists()]
    if not missing:
        return
    if not install:
        raise RuntimeError(f"missing tools (packages {' '.join(missing)}) and --no-install given")
    log(f"installing {' '.join(missing)} with apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Keep the packages' init scripts from starting system-wide nginx/haproxy services.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if os.geteuid() == 0 and not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        subprocess.run(sudo + ["apt-get", "update", "-q"], env=env, check=False, timeout=600)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing,
                       env=env, check=True, timeout=1200)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    for binary in ("nginx", "haproxy", "wrk"):
        if not shutil.which(binary) and not Path(f"/usr/sbin/{binary}").exists():
            raise RuntimeError(f"{binary} still missing after apt-get install")


def tool_version(argv: list[str], pattern: str) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        m = re.search(pattern, p.stdout + p.stderr)
        return m.group(1) if m else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "absent"


def machine_meta() -> dict:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or "uncommitted"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        rev += "+dirty" if dirty else ""
    except (OSError, subprocess.TimeoutExpired):
        rev = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem, 1),
        "kernel": platform.release(),
        "versions": {
            "ekilibri": rev,
            "nginx": tool_version(["nginx", "-v"], r"nginx/(\S+)"),
            "haproxy": tool_version(["haproxy", "-v"], r"version (\S+)"),
            "wrk": tool_version(["wrk", "-v"], r"wrk (\S+)"),
        },
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="tools/bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 1 s per measurement, no per-measurement warm-up")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run for tests: 1 s, one concurrency, a few workloads")
    ap.add_argument("--out", type=Path, help="output directory (default bench-results/<timestamp>)")
    ap.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 3; quick/smoke 1)")
    ap.add_argument("--duration", type=int, help="seconds per measurement (default 5; quick/smoke 1)")
    ap.add_argument("--warmup", type=int, help="warm-up seconds before each measurement (default 1; quick/smoke 0)")
    ap.add_argument("--baseline", action="append", default=[], metavar="LABEL=PATH",
                    help="also bench the ekilibri binary PATH (e.g. an older commit's) as contender "
                         "ekilibri@LABEL, same config as ekilibri; repeatable")
    ap.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS),
                    help=f"comma-separated subset of {','.join(ALL_CONTENDERS)}")
    ap.add_argument("--workloads", help="comma-separated subset of " + ",".join(w.name for w in all_workloads()) + " (default: all)")
    ap.add_argument("--workers", type=int, default=2, help="workers/threads per proxy (default 2)")
    ap.add_argument("--backends", type=int, default=3, help="number of ekilibri-backend processes (default 3)")
    ap.add_argument("--backend-threads", type=int, default=1, help="--threads of each backend (default 1)")
    ap.add_argument("--loadgen-threads", type=int, default=1, help="ekilibri-loadgen --threads (default 1)")
    ap.add_argument("--dedicated", type=int, metavar="N",
                    help="dedicated-core mode, as thread-per-core is deployed: every proxy gets N workers "
                         "pinned to the last N CPUs, and wrk/loadgen and the backends run on the other CPUs "
                         "(sets --workers, --cpus-proxy, --cpus-client and --cpus-backend)")
    ap.add_argument("--cpus-proxy", help="taskset CPU list for the proxies (default: no pinning)")
    ap.add_argument("--cpus-client", help="taskset CPU list for wrk/loadgen (default: no pinning)")
    ap.add_argument("--cpus-backend", help="taskset CPU list for the backends (default: no pinning)")
    ap.add_argument("--no-pin-workers", action="store_true",
                    help="let every proxy's workers float (ekilibri pin_workers = false; default: "
                         "pinned one per CPU for all contenders)")
    ap.add_argument("--syscalls", action="store_true",
                    help="also count each proxy's syscalls per request (perf stat and strace -c)")
    ap.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release",
                    help="where ekilibri, ekilibri-backend and ekilibri-loadgen are (default target/release)")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release --bins")
    ap.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing missing tools")
    ap.add_argument("--report-from", type=Path, metavar="DIR",
                    help="only rewrite DIR/report.md and DIR/chart.svg from DIR/results.json")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.report_from:
        results = json.loads((a.report_from / "results.json").read_text())
        summarize(results)
        write_results(results, a.report_from)
        write_report(results, a.report_from)
        write_chart(results, a.report_from)
        log(f"rewrote {a.report_from}/report.md and chart.svg")
        return 0
    if a.dedicated:
        cpus = sorted(os.sched_getaffinity(0))
        if not 0 < a.dedicated < len(cpus):
            print(f"--dedicated {a.dedicated}: need 1..{len(cpus) - 1} (this process may use {len(cpus)} CPUs)",
                  file=sys.stderr)
            return 2
        proxy, rest = cpus[-a.dedicated:], cpus[:-a.dedicated]
        a.workers = a.dedicated
        a.cpus_proxy = ",".join(map(str, proxy))
        a.cpus_client = a.cpus_backend = ",".join(map(str, rest))
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    short = mode != "full"
    for spec in a.baseline:
        label, _, path = spec.partition("=")
        binary = Path(path).resolve()
        if not label or not binary.is_file():
            print(f"--baseline {spec!r}: expected LABEL=PATH to an ekilibri binary", file=sys.stderr)
            return 2
        name = f"ekilibri@{label}"
        BASELINES[name] = binary
        ALL_CONTENDERS.insert(ALL_CONTENDERS.index("ekilibri") + 1, name)
        PROXIES.append(name)
        COLORS[name] = BASELINE_COLORS[(len(BASELINES) - 1) % len(BASELINE_COLORS)]
    contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    contenders += [b for b in BASELINES if b not in contenders]
    bad = [c for c in contenders if c not in ALL_CONTENDERS]
    if bad or not contenders:
        print(f"unknown contenders {bad}; choose from {ALL_CONTENDERS}", file=sys.stderr)
        return 2
    workloads = all_workloads()
    if a.workloads:
        names = [n.strip() for n in a.workloads.split(",")]
        unknown = [n for n in names if n not in {w.name for w in workloads}]
        if unknown:
            print(f"unknown workloads {unknown}; choose from {[w.name for w in workloads]}", file=sys.stderr)
            return 2
        workloads = [w for w in workloads if w.name in names]
    elif a.smoke:
        workloads = [w for w in workloads if w.name in SMOKE_WORKLOADS]
    if any(w.tool == "loadgen" for w in workloads) and not any(w.concurrency_series for w in workloads):
        workloads.insert(0, next(w for w in all_workloads() if w.name == "get-c64"))
    s = Settings(
        contenders=contenders,
        workloads=workloads,
        rounds=a.rounds or (1 if short else 3),
        duration=a.duration or (1 if short else 5),
        warmup=a.warmup if a.warmup is not None else (0 if short else 1),
        workers=a.workers,
        backends=a.backends,
        backend_threads=a.backend_threads,
        loadgen_threads=a.loadgen_threads,
        cpus_proxy=a.cpus_proxy,
        cpus_client=a.cpus_client,
        cpus_backend=a.cpus_backend,
        syscalls=a.syscalls,
        mode=mode,
        pin_cpus=None if a.no_pin_workers else worker_cpus(a.workers, a.cpus_proxy),
    )
    started = dt.datetime.now()
    outdir = (a.out or REPO / "bench-results" / started.strftime("%Y%m%d-%H%M%S")).resolve()
    for sub in ("configs", "logs", "scripts"):
        (outdir / sub).mkdir(parents=True, exist_ok=True)

    ensure_tools(s.syscalls, not a.no_install)
    bins = a.bin_dir.resolve()
    if not a.no_build:
        log("cargo build --release --bins")
        if subprocess.run(["cargo", "build", "--release", "--bins"], cwd=REPO, timeout=1800).returncode != 0:
            raise RuntimeError("cargo build --release --bins failed (use --no-build to bench existing binaries)")
    needed = ["ekilibri-backend", "ekilibri-loadgen"] + (["ekilibri"] if {"ekilibri", "ekilibri-plain"} & set(contenders) else [])
    for b in needed:
        if not (bins / b).exists():
            raise RuntimeError(f"{bins / b} not found (build it or pass --bin-dir)")

    pin = {k: f"on CPUs {v}" for k, v in (("proxy", s.cpus_proxy), ("client", s.cpus_client),
                                          ("backends", s.cpus_backend)) if v}
    pin["proxy workers"] = (f"one per CPU ({','.join(map(str, s.pin_cpus))}; ekilibri pins itself, nginx "
                            "worker_cpu_affinity, HAProxy cpu-map)" if s.pin_cpus
                            else "all contenders' workers float (ekilibri pin_workers = false)")
    results: dict[str, Any] = {
        "meta": {
            "started": started.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["tools/bench/run"] + argv),
            "mode": mode,
            "contenders": contenders,
            "workloads": [w.__dict__ for w in workloads],
            "rounds": s.rounds,
            "duration_s": s.duration,
            "warmup_s": s.warmup,
            "workers": s.workers,
            "backends": s.backends,
            "backend_threads": s.backend_threads,
            "loadgen_threads": s.loadgen_threads,
            "pinning": ("dedicated cores: " if a.dedicated else "shared cores: ")
            + "; ".join(f"{k} {v}" for k, v in pin.items()) + "; everything else floats",
            **machine_meta(),
        },
        "capacity": {},
        "runs": [],
        "exits": [],
    }
    procs = Procs()
    t0 = time.monotonic()
    try:
        run_rounds(s, procs, bins, outdir, results)
    finally:
        procs.stop_all()
        results["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
        summarize(results)
        write_results(results, outdir)
        write_report(results, outdir)
        write_chart(results, outdir)
        log(f"results in {outdir}")
    return 0


def _terminate(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; every started process was stopped")
        sys.exit(130)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log(f"error: {e}")
        sys.exit(1)
