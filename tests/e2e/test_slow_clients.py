"""Slow clients, tried with a real attacker's tool: `slowhttptest` (Debian) holds hundreds of connections that
send their headers a few bytes at a time (slowloris) while a legitimate client keeps calling the data plane.
The header timeout closes every slow connection, the legitimate requests keep being answered, the closures are
counted in `molt_client_ends_total{kind="header_timeout"}`, and no ERROR line is written."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx

from harness import StartDataplane, World

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
