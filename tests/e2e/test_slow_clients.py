"""Slow clients, tried with a real attacker's tool: `slowhttptest` (Debian) holds hundreds of connections that
send their headers a few bytes at a time (slowloris) while a legitimate client keeps calling the data plane.
The header timeout closes every slow connection, the legitimate requests keep being answered, the closures are
counted in `molt_client_ends_total{kind="header_timeout"}`, and no ERROR line is written.

Slow bodies (R-U-Dead-Yet) the same way: `slowhttptest -B`'s form-encoded bodies are refused at their first bytes
(a model route reads JSON as it arrives), and bodies that stay valid JSON while they trickle are answered 408 at
`server.client_body_timeout` and closed (`molt_client_ends_total{kind="body_timeout"}`)."""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx

from harness import CHAT_MODEL, Dataplane, StartDataplane, World

SLOWHTTPTEST = shutil.which("slowhttptest") or "/usr/bin/slowhttptest"
HEADER_TIMEOUT_S = 2
CONNECTIONS = 400


def test_slowloris_connections_are_closed_at_the_header_timeout(
    start_dataplane: StartDataplane, world: World, tmp_path: Path
) -> None:
    assert Path(SLOWHTTPTEST).is_file(), "slowhttptest is not installed; scripts/test installs it"
    config = world.config(tmp_path / "config", tls=False)
    config["server"]["header_timeout"] = f"{HEADER_TIMEOUT_S}s"
    dataplane = start_dataplane(config)
    auth = {"authorization": f"Bearer {world.full_key.secret}"}

    def legit_latencies(seconds: float) -> list[float]:
        took: list[float] = []
        with httpx.Client(base_url=dataplane.url, timeout=10) as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t = time.monotonic()
                assert client.get("/v1/models", headers=auth).status_code == 200
                took.append(time.monotonic() - t)
                time.sleep(0.05)
        return took

    before = legit_latencies(1.5)
    attack = subprocess.Popen(
        [
            SLOWHTTPTEST,
            "-H",  # slowloris: headers a few bytes at a time
            "-c", str(CONNECTIONS),
            "-r", "200",  # connections per second
            "-i", "1",  # one more header line every second: each read is quick, the header never ends
            "-l", "10",
            "-u", f"{dataplane.url}/v1/models",
            "-p", "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    during: list[float] = []
    meanwhile = threading.Thread(target=lambda: during.extend(legit_latencies(6)))
    time.sleep(1)
    meanwhile.start()
    meanwhile.join()
    report, _ = attack.communicate(timeout=60)

    assert len(during) > 20, "legitimate requests kept being answered during the attack"
    assert max(during) < 1.0, f"a legitimate request waited {max(during):.2f}s during the attack:\n{report}"
    assert statistics.median(during) < max(0.05, 5 * statistics.median(before))

    closed = dataplane.metric_value('molt_client_ends_total{kind="header_timeout"}')
    assert closed >= 0.9 * CONNECTIONS, f"only {closed} slow connections were closed at the header timeout:\n{report}"
    assert dataplane.metric_value("molt_client_connections") < 10, "slow connections were left open"
    errors = [line for line in dataplane.logs().splitlines() if '"level":"ERROR"' in line]
    assert not errors, f"the attack wrote ERROR lines: {errors[:3]}"


# --------------------------------------------------------------------------------------------
# Slow bodies (R-U-Dead-Yet)
# --------------------------------------------------------------------------------------------

BODY_TIMEOUT_S = 2
BODY_CONNECTIONS = 300


def _requests_with_status(dataplane: Dataplane, status: int) -> float:
    """`molt_requests_total` summed over every route, model and provider for one status."""
    needle = f'status="{status}"'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in dataplane.metrics().splitlines()
        if line.startswith("molt_requests_total{") and needle in line
    )


def _legit_latencies(dataplane: Dataplane, world: World, seconds: float) -> list[float]:
    """Chat completions, one after another on one keep-alive connection, each timed."""
    took: list[float] = []
    auth = {"authorization": f"Bearer {world.full_key.secret}"}
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "still there?"}]}
    with httpx.Client(base_url=dataplane.url, timeout=10) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.monotonic()
            assert client.post("/v1/chat/completions", headers=auth, json=body).status_code == 200
            took.append(time.monotonic() - t)
            time.sleep(0.05)
    return took


def _slow_body_dataplane(start_dataplane: StartDataplane, world: World, tmp_path: Path) -> Dataplane:
    config = world.config(tmp_path / "config", tls=False)
    config["server"]["client_body_timeout"] = f"{BODY_TIMEOUT_S}s"
    return start_dataplane(config)


def test_slowhttptest_slow_bodies_never_hold_a_connection(
    start_dataplane: StartDataplane, world: World, tmp_path: Path
) -> None:
    """`slowhttptest -B` with a valid key: each connection declares a 4 KiB form-encoded body and sends it a few
    bytes a second. A model route reads its body as JSON as it arrives, so every one is refused (400) at its first
    bytes and closed: the attack holds nothing, let alone until the body timeout."""
    assert Path(SLOWHTTPTEST).is_file(), "slowhttptest is not installed; scripts/test installs it"
    dataplane = _slow_body_dataplane(start_dataplane, world, tmp_path)
    before = _legit_latencies(dataplane, world, 1.5)
    attack = subprocess.Popen(
        [
            SLOWHTTPTEST,
            "-B",  # slow body: a declared Content-Length, then a few bytes per interval
            "-c", str(BODY_CONNECTIONS),
            "-r", "150",
            "-i", "1",
            "-s", "4096",
            "-x", "4",
            # slowhttptest has no option for an arbitrary header; its Content-Type value is written as is, so the
            # key rides in after it: the attacker is a client with a valid key.
            "-f", f"application/json\r\nAuthorization: Bearer {world.full_key.secret}",
            "-l", "6",
            "-u", f"{dataplane.url}/v1/chat/completions",
            "-p", "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1)
    during = _legit_latencies(dataplane, world, 4)
    held = dataplane.metric_value("molt_client_connections")
    report, _ = attack.communicate(timeout=60)

    assert len(during) > 20, "legitimate requests kept being answered during the attack"
    assert max(during) < 1.0, f"a legitimate request waited {max(during):.2f}s during the attack:\n{report}"
    assert statistics.median(during) < max(0.05, 5 * statistics.median(before))
    refused = _requests_with_status(dataplane, 400)
    assert refused >= 0.9 * BODY_CONNECTIONS, f"only {refused} slow bodies were refused:\n{report}"
    assert held < 10, f"{held} connections were held while the attack ran"
    assert dataplane.metric_value("molt_client_connections") < 10, "slow connections were left open"
    errors = [line for line in dataplane.logs().splitlines() if '"level":"ERROR"' in line]
    assert not errors, f"the attack wrote ERROR lines: {errors[:3]}"


def test_slow_json_bodies_are_answered_408_at_the_body_timeout(
    start_dataplane: StartDataplane, world: World, tmp_path: Path
) -> None:
    """R-U-Dead-Yet with a body the JSON reader cannot refuse early: a valid prefix, then one space (JSON
    whitespace) per connection every half second. Every connection is answered 408 at the body timeout and closed,
    legitimate requests keep their latency meanwhile, nothing reaches the upstream, and no ERROR line is written."""
    dataplane = _slow_body_dataplane(start_dataplane, world, tmp_path)
    world.mock.clear()
    before = _legit_latencies(dataplane, world, 1.5)
    host, port = dataplane.listeners["http"].rsplit(":", 1)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {world.full_key.secret}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        f'{{"model":"{CHAT_MODEL}","messages":['
    ).encode()

    answers: dict[int, tuple[float, bytes]] = {}

    def attack() -> None:
        socks: dict[int, tuple[socket.socket, float]] = {}
        for i in range(BODY_CONNECTIONS):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(head)
            sock.setblocking(False)
            socks[i] = (sock, time.monotonic())
        buffers: dict[int, bytes] = {i: b"" for i in socks}
        deadline = time.monotonic() + BODY_TIMEOUT_S + 5
        while socks and time.monotonic() < deadline:
            time.sleep(0.5)
            for i, (sock, started) in list(socks.items()):
                try:
                    while data := sock.recv(4096):
                        buffers[i] += data
                    closed = True  # recv returned b"": the server closed
                except BlockingIOError:
                    closed = False
                except ConnectionResetError:
                    closed = True
                if closed:
                    answers[i] = (time.monotonic() - started, buffers[i])
                    sock.close()
                    del socks[i]
                    continue
                try:
                    sock.send(b" ")
                except (BrokenPipeError, ConnectionResetError):
                    pass
        for sock, _ in socks.values():
            sock.close()

    attacker = threading.Thread(target=attack)
    attacker.start()
    time.sleep(0.5)
    during = _legit_latencies(dataplane, world, BODY_TIMEOUT_S + 1)
    attacker.join(timeout=BODY_TIMEOUT_S + 30)

    assert len(answers) == BODY_CONNECTIONS, f"{BODY_CONNECTIONS - len(answers)} slow bodies were never closed"
    statuses = {raw.split(b"\r\n", 1)[0] for _, raw in answers.values()}
    assert statuses == {b"HTTP/1.1 408 Request Timeout"}, statuses
    waited = sorted(t for t, _ in answers.values())
    # Closed at the body timeout: not before it, and not long after (sampled every half second).
    assert waited[0] >= BODY_TIMEOUT_S - 0.1, f"a slow body was cut after {waited[0]:.2f}s"
    assert waited[-1] < BODY_TIMEOUT_S + 2.5, f"a slow body was held {waited[-1]:.2f}s"
    assert len(during) > 15, "legitimate requests kept being answered during the attack"
    assert max(during) < 1.0, f"a legitimate request waited {max(during):.2f}s during the attack"
    assert statistics.median(during) < max(0.05, 5 * statistics.median(before))
    ended = dataplane.metric_value('molt_client_ends_total{kind="body_timeout"}')
    assert ended == BODY_CONNECTIONS, ended
    assert len(world.mock.requests()) == len(before) + len(during), "a slow body reached the upstream"
    assert dataplane.metric_value("molt_client_connections") < 10, "slow connections were left open"
    errors = [line for line in dataplane.logs().splitlines() if '"level":"ERROR"' in line]
    assert not errors, f"the attack wrote ERROR lines: {errors[:3]}"
