#!/usr/bin/env python3
"""Memory of idle client connections: RSS growth of ekilibri per connection.

Starts one `ekilibri-backend` and one balancer (`--workers`, default 1) on
127.0.0.1, opens N client connections and reports how much the balancer's
resident set (VmRSS in /proc/PID/status) grew, divided by N. Two kinds of
idle connection are measured, each with a fresh balancer:

  fresh      accepted, nothing sent yet (waiting for the first request);
  keepalive  one GET served, then kept open waiting for the next request.

Kernel socket memory is not in VmRSS, so what is reported is the
balancer's own state per connection (buffers, task, registry entries) plus
allocator slack. Loopback only; every process started here is killed on exit.

Usage:
    cargo build --release --bins
    tools/idle-conns.py                      # 10 000 connections, both kinds
    tools/idle-conns.py -n 1000 --kind keepalive --bin /tmp/old/ekilibri
"""

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"process exited early with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on 127.0.0.1:{port}")


def get(sock):
    """Sends one keep-alive GET and reads its whole (Content-Length) answer."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed before the end of the body")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"unexpected answer: {head[:40]!r}")


def measure(args, kind, backend_port):
    port = free_port()
    conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    conf.write(
        f'servers = ["127.0.0.1:{backend_port}"]\n'
        f'listen = "127.0.0.1:{port}"\n'
        f"workers = {args.workers}\n"
        'admin_listen = ""\n'
        "keepalive_timeout = 600000\n"
        "client_header_timeout = 600000\n"
        "health_check_interval = 60000\n"
        f"max_client_connections = {args.n + 1000}\n"
    )
    conf.close()
    lb = subprocess.Popen(
        [args.bin, "-f", conf.name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, RUST_LOG="warn"),
        start_new_session=True,
    )
    socks = []
    try:
        wait_listening(port, lb)
        # Warm up the code paths and the allocator with a few requests.
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                get(s)
        time.sleep(1.0)
        before = rss_kib(lb.pid)
        for i in range(args.n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if kind == "keepalive":
                get(s)
            socks.append(s)
        # Let the last accepts and reads settle; heap trims run every 10 s.
        time.sleep(args.settle)
        after = rss_kib(lb.pid)
        if lb.poll() is not None:
            sys.exit("balancer exited during the measurement")
        per = (after - before) * 1024 / args.n
        print(
            f"{kind:9} {args.n} connections: VmRSS {before} -> {after} KiB, "
            f"{per:.0f} bytes per connection"
        )
        return per
    finally:
        for s in socks:
            s.close()
        os.killpg(lb.pid, signal.SIGKILL)
        lb.wait()
        os.unlink(conf.name)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=10_000, help="connections (default 10000)")
    p.add_argument("--kind", choices=["fresh", "keepalive", "both"], default="both")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--settle", type=float, default=2.0, help="seconds before the RSS sample")
    p.add_argument("--bin", default=os.path.join(ROOT, "target/release/ekilibri"))
    p.add_argument(
        "--backend-bin", default=os.path.join(ROOT, "target/release/ekilibri-backend")
    )
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.n + 1000
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} < {need}: lower -n or raise it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backend = subprocess.Popen(
        [args.backend_bin, "-p", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        line = backend.stdout.readline()
        if "listening on" not in line:
            sys.exit(f"backend did not start: {line!r}")
        backend_port = int(line.rsplit(":", 1)[1])
        kinds = ["fresh", "keepalive"] if args.kind == "both" else [args.kind]
        for kind in kinds:
            measure(args, kind, backend_port)
    finally:
        os.killpg(backend.pid, signal.SIGKILL)
        backend.wait()


if __name__ == "__main__":
    main()
