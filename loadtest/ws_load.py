#!/usr/bin/env python3
"""Idle WebSocket connections through the data plane (or nginx), and the latency it adds per message.

What it does, all on loopback:
1. starts `--bots` mock bot gateways (`molt mock-bot`) and `--dataplanes` data planes (`molt dataplane`),
   each data plane routing bots `bot-0..` to the mock bots; with `--via nginx`, one nginx with
   `--dataplanes` worker processes instead, doing the same job (the bot token injected in place of the
   client's key, `Upgrade` passed through, the bots round-robin), as the baseline;
2. opens `--conns` idle `/ws/chat` connections, spread over `--clients` client processes, data planes and
   bots round-robin, each client process on its own 127.0.0.x source address (so the client side does not
   run out of ephemeral ports towards one data plane port);
3. reports every proxy process's resident memory (VmRSS) before and after, and per held connection;
4. with every connection still open, measures echo round trips (`{"type":"echo"}` answered by the mock bot)
   through the data plane and directly to the mock bot, interleaved one for one, and reports p50/p99 of
   each and of the difference.

Limits of this machine kind that shape the run: the open-file hard limit is per process and a process may
only lower it (`ulimit -Hn`, 20,000 here). A relayed connection holds two sockets in the data plane (the
client's and the bot's), so one data plane process holds at most ~9,990; more connections take more data
plane processes (`--dataplanes`), and the same goes for the mock bots and the clients. The script raises
its soft limit to the hard one (`ulimit -n`) in itself and in every process it starts.

Usage (the e2e venv has `websockets`):
    venv=$(ls -d ~/.cache/molt/venv-* | head -1)
    $venv/bin/python loadtest/ws_load.py --molt target/release/molt --conns 10000 --dataplanes 2
    $venv/bin/python loadtest/ws_load.py --molt target/release/molt --conns 50000 --dataplanes 6 \
        --bots 3 --clients 4
Prints a table, or one JSON object with `--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

# Linux `IP_BIND_ADDRESS_NO_PORT`: bind to a source address but pick the port at connect time, per
# destination. A plain bind to port 0 reserves a port for every destination at once, and 50k of those
# leave the data plane no ephemeral ports for its own connections to the bots (EADDRNOTAVAIL).
IP_BIND_ADDRESS_NO_PORT = 24

HANDSHAKES_IN_FLIGHT = 256  # per client process; keeps the accept queues (somaxconn) from overflowing


def raise_nofile() -> int:
    """Soft open-file limit up to the hard one; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 (loopback)
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    # Children inherit the raised soft limit.
    out = log.open("wb")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=ENV)


ENV = dict(os.environ)


def dataplane_config(workdir: Path, key_sha: str, bot_ports: list[int]) -> tuple[Path, str, str]:
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    bots = "".join(
        f'\n[[bots]]\nid = "bot-{i}"\nuser = "load"\ngateway_url = "ws://127.0.0.1:{p}/ws"\n'
        f'gateway_token = "{TOKEN}"\n'
        for i, p in enumerate(bot_ports)
    )
    text = f"""version = 1
[server]
listen = "{listen}"
threads = 2
[admin]
listen = "{admin}"
[log]
format = "json"
access_log = false
[websocket]
# Idle for the whole run: no pings, no idle close, no per-user cap in the way.
idle_timeout = "1h"
ping_interval = "30m"
max_connections_per_user = 1000000
[[keys]]
id = "load"
user = "load"
sha256 = "{key_sha}"
[[providers]]
name = "none"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
keys = ["sk-unused"]
[[models]]
name = "unused"
provider = "none"
{bots}"""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "molt.toml"
    path.write_text(text)
    return path, listen, admin


TOKEN = "gw-" + secrets.token_urlsafe(16)


def nginx_config(workdir: Path, workers: int, limit: int, bot_ports: list[int]) -> tuple[Path, str]:
    """nginx as a WebSocket proxy doing the data plane's job: client key out, bot token in."""
    listen = f"127.0.0.1:{free_port()}"
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in bot_ports)
    text = f"""worker_processes {workers};
worker_rlimit_nofile {limit};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections {limit - 100}; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream bots {{
{servers}    }}
    server {{
        listen {listen} reuseport backlog=4096;
        location = /ws/chat {{
            proxy_pass http://bots/ws;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Authorization "Bearer {TOKEN}";
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
        location = /healthz {{ return 200; }}
    }}
}}
"""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path, listen


def with_children(pid: int) -> list[int]:
    """`pid` and its direct children (nginx's master and workers)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(k) for k in kids.read_text().split())] if kids.exists() else [pid]


# ------------------------------------------------------------------------------------------------
# Client processes
# ------------------------------------------------------------------------------------------------


async def hold(urls: list[str], key: str, source: str, conn: Any) -> None:
    """Open every URL, report counts, hold until told, then close."""
    gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)
    opened: list[Any] = []
    errors: dict[str, int] = {}

    async def one(url: str) -> None:
        async with gate:
            try:
                host, port = url.split("/")[2].split(":")
                sock = socket.socket()
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
                ws = await websockets.connect(
                    url,
                    sock=sock,
                    additional_headers={"Authorization": f"Bearer {key}"},
                    open_timeout=60,
                    ping_interval=None,  # idle means idle: no client pings either
                    compression=None,
                )
                opened.append(ws)
            except Exception as e:  # noqa: BLE001 (counted and reported)
                kind = type(e).__name__ + (f":{e}" if isinstance(e, OSError) else "")
                errors[kind[:80]] = errors.get(kind[:80], 0) + 1

    await asyncio.gather(*(one(u) for u in urls))
    conn.send({"opened": len(opened), "errors": errors})
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # "close"
    alive = sum(1 for ws in opened if ws.state.name == "OPEN")
    conn.send({"alive": alive})
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


def client_main(urls: list[str], key: str, source: str, conn: Any) -> None:
    raise_nofile()
    asyncio.run(hold(urls, key, source, conn))


# ------------------------------------------------------------------------------------------------
# Latency
# ------------------------------------------------------------------------------------------------


async def echo_rtts(proxied_url: str, direct_url: str, key: str, messages: int, size: int) -> dict[str, list[float]]:
    payload = "x" * size
    out: dict[str, list[float]] = {"proxied": [], "direct": []}
    async with (
        websockets.connect(proxied_url, additional_headers={"Authorization": f"Bearer {key}"}, compression=None) as p,
        websockets.connect(direct_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, compression=None) as d,
    ):
        for i in range(messages + 200):
            for name, ws in (("proxied", p), ("direct", d)) if i % 2 == 0 else (("direct", d), ("proxied", p)):
                msg = json.dumps({"type": "echo", "seq": i, "pad": payload})
                t0 = time.perf_counter_ns()
                await ws.send(msg)
                got = await ws.recv()
                dt = (time.perf_counter_ns() - t0) / 1000.0
                assert got == msg, "echo mismatch"
                if i >= 200:  # the first 200 of each warm up caches and the allocator
                    out[name].append(dt)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molt", default=os.environ.get("MOLT_BIN", "target/release/molt"))
    ap.add_argument("--via", choices=["molt", "nginx"], default="molt", help="the proxy under test")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--dataplanes", type=int, default=0, help="default: enough for --conns (9,000 each)")
    ap.add_argument("--bots", type=int, default=0, help="default: enough for --conns (18,000 each)")
    ap.add_argument("--clients", type=int, default=0, help="default: enough for --conns (15,000 each)")
    ap.add_argument("--messages", type=int, default=5000, help="echo round trips per path")
    ap.add_argument("--size", type=int, default=64, help="echo payload padding, bytes")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    ap.add_argument("--log", default="warn", help="RUST_LOG of the processes started")
    ap.add_argument("--workdir", help="configs and logs go here (kept); default: a temporary directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    limit = raise_nofile()
    ENV["RUST_LOG"] = args.log
    per_dp = min(9000, (limit - 200) // 2)
    dps = args.dataplanes or max(1, -(-args.conns // per_dp))
    bots_n = args.bots or max(1, -(-args.conns // min(18000, limit - 200)))
    clients_n = args.clients or max(1, -(-args.conns // min(15000, limit - 200)))
    molt = shutil.which(args.molt) or args.molt
    key = "molt_sk_" + secrets.token_urlsafe(32)
    key_sha = hashlib.sha256(key.encode()).hexdigest()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="molt-ws-load-"))
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bot_ports = [free_port() for _ in range(bots_n)]
        for i, port in enumerate(bot_ports):
            procs.append(start([molt, "mock-bot", "--listen", f"127.0.0.1:{port}", "--token", TOKEN], work / f"bot{i}.log"))
        for port in bot_ports:
            wait_http(f"http://127.0.0.1:{port}/status")
        # (process, listen address, admin address: None for nginx)
        planes: list[tuple[subprocess.Popen[bytes], str, str | None]] = []
        if args.via == "molt":
            for i in range(dps):
                cfg, listen, admin = dataplane_config(work / f"dp{i}", key_sha, bot_ports)
                p = start([molt, "dataplane", "--config", str(cfg)], work / f"dp{i}.log")
                procs.append(p)
                planes.append((p, listen, admin))
            for _, _, admin in planes:
                wait_http(f"http://{admin}/readyz")
        else:
            # One nginx, one worker per would-be data plane; reuseport spreads the connections.
            cfg, listen = nginx_config(work / "nginx", dps, limit, bot_ports)
            p = start([args.nginx, "-c", str(cfg), "-p", str(work / "nginx"), "-g", "daemon off;"], work / "nginx.log")
            procs.append(p)
            planes.append((p, listen, None))
            wait_http(f"http://{listen}/healthz")
            deadline = time.monotonic() + 10
            while len(with_children(p.pid)) < dps + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
        time.sleep(0.5)
        proxy_pids = [q for p, _, _ in planes for q in with_children(p.pid)]
        rss_before = [rss_kib(q) for q in proxy_pids]

        urls = [
            f"ws://{planes[i % len(planes)][1]}/ws/chat?bot=bot-{(i // dps) % bots_n}" for i in range(args.conns)
        ]
        ctx = mp.get_context("spawn")
        pipes, workers = [], []
        t0 = time.monotonic()
        for c in range(clients_n):
            parent, child = ctx.Pipe()
            w = ctx.Process(target=client_main, args=(urls[c::clients_n], key, f"127.0.0.{c + 2}", child))
            w.start()
            pipes.append(parent)
            workers.append(w)
        reports = []
        for p in pipes:
            while not p.poll(1.0):
                dead = [q.args for q in procs if q.poll() is not None]
                if dead:
                    raise RuntimeError(f"died during the ramp: {dead}; logs in {work}")
            reports.append(p.recv())
        ramp = time.monotonic() - t0
        opened = sum(r["opened"] for r in reports)
        errors: dict[str, int] = {}
        for r in reports:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        time.sleep(args.settle)
        rss_after = [rss_kib(q) for q in proxy_pids]
        open_gauge = []
        for _, _, admin in planes:
            if admin is None:
                continue
            with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:  # noqa: S310
                for line in r.read().decode().splitlines():
                    if line.startswith("molt_ws_open_connections "):
                        open_gauge.append(int(float(line.split()[1])))

        rtts = asyncio.run(
            echo_rtts(
                f"ws://{planes[0][1]}/ws/chat?bot=bot-0",
                f"ws://127.0.0.1:{bot_ports[0]}/ws",
                key,
                args.messages,
                args.size,
            )
        )
        for p in pipes:
            p.send("close")
        alive = sum(p.recv()["alive"] for p in pipes)
        for w in workers:
            w.join(60)

        added = [a - b for a, b in zip(rtts["proxied"], rtts["direct"])]
        grown = sum(rss_after) - sum(rss_before)
        result = {
            "via": args.via,
            "connections_requested": args.conns,
            "connections_opened": opened,
            "still_open_after_latency_run": alive,
            "open_gauge_per_dataplane": open_gauge,
            "errors": errors,
            "ramp_seconds": round(ramp, 1),
            "dataplanes": dps,
            "bots": bots_n,
            "client_processes": clients_n,
            "nofile_limit": limit,
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
            "rss_bytes_per_connection": round(grown * 1024 / max(1, opened)),
            "echo_messages": len(added),
            "echo_bytes": len(json.dumps({"type": "echo", "seq": 0, "pad": "x" * args.size})),
            "rtt_us": {
                name: {"p50": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1), "mean": round(statistics.fmean(v), 1)}
                for name, v in rtts.items()
            },
            "added_us": {
                "p50_of_difference": round(pct(added, 50), 1),
                "p99_of_difference": round(pct(added, 99), 1),
                "p50_minus_p50": round(pct(rtts["proxied"], 50) - pct(rtts["direct"], 50), 1),
                "p99_minus_p99": round(pct(rtts["proxied"], 99) - pct(rtts["direct"], 99), 1),
            },
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for k, v in result.items():
                print(f"{k:32} {v}")
        return 0 if opened == args.conns else 1
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
