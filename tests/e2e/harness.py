"""Building blocks for Molt's end-to-end tests.

Processes (the mock provider, data planes), generated configs and secrets, JWTs, SSE parsing,
and SDK clients whose every HTTP exchange is recorded so tests can inspect raw bytes and headers.
Fixtures that wire these together live in conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import httpx2
import openai
import tomli_w

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache/molt/target")
MOLT_BIN = Path(os.environ.get("MOLT_BIN") or TARGET_DIR / "debug/molt")
MOLT_MOCK_BIN = Path(os.environ.get("MOLT_MOCK_BIN") or TARGET_DIR / "debug/examples/mock_provider")

STARTUP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------


_REFUSING: list[socket.socket] = []


def refused_port() -> int:
    """A port on 127.0.0.1 that refuses connections for the rest of the session: bound here and never listened
    on, so no other process can take it (a dead upstream, a Stripe that is never called)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _REFUSING.append(sock)
    return sock.getsockname()[1]


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 10.0, interval: float = 0.05) -> T:
    """Call `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get_ok(url: str, **kwargs: Any) -> httpx.Response:
    """GET `url` (5 s timeout), raising on an error status: the test hooks of the mocks and fakes."""
    response = httpx.get(url, timeout=5, **kwargs)
    response.raise_for_status()
    return response


def new_request_id() -> str:
    return f"e2e-{uuid.uuid4().hex}"


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


MOCK_SENTENCE = "Hello from the Molt mock provider."


def expected_answer(chunks: int) -> str:
    """The mock's answer text for `chunks` chunks: one word of MOCK_SENTENCE per chunk, cycled."""
    words = MOCK_SENTENCE.split(" ")
    return " ".join(words[i % len(words)] for i in range(chunks))


def mock_headers(
    *,
    chunks: int | None = None,
    chunk_delay_ms: int | None = None,
    ttft_ms: int | None = None,
    status: int | None = None,
    abort_after: int | None = None,
    header_delay_ms: int | None = None,
    no_usage: bool = False,
) -> dict[str, str]:
    """Per-request controls understood by the mock provider (the data plane forwards them)."""
    controls = {
        "x-mock-chunks": chunks,
        "x-mock-chunk-delay-ms": chunk_delay_ms,
        "x-mock-ttft-ms": ttft_ms,
        "x-mock-status": status,
        "x-mock-abort-after": abort_after,
        "x-mock-header-delay-ms": header_delay_ms,
        "x-mock-no-usage": "1" if no_usage else None,
    }
    return {name: str(value) for name, value in controls.items() if value is not None}


# --------------------------------------------------------------------------------------------
# Secrets: every secret a test makes is registered so leak checks can look for all of them.
# --------------------------------------------------------------------------------------------

SECRETS: set[str] = set()


def new_secret(prefix: str) -> str:
    value = prefix + secrets.token_urlsafe(24)
    SECRETS.add(value)
    return value


def assert_no_secrets(text: str | bytes, where: str) -> None:
    """No registered secret (master key, client key, JWT signing secret) appears in `text`."""
    haystack = text.decode(errors="replace") if isinstance(text, bytes) else text
    leaked = sorted(s for s in SECRETS if s in haystack)
    assert not leaked, f"{where} contains secret(s): {[s[:12] + '...' for s in leaked]}"


@dataclass(frozen=True)
class ClientKey:
    """A molt client key as a client holds it, and the config entry that grants it."""

    id: str
    user: str
    secret: str
    models: tuple[str, ...] | None = None

    @property
    def sha256(self) -> str:
        return sha256_hex(self.secret)

    def config_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.id, "user": self.user, "sha256": self.sha256}
        if self.models is not None:
            entry["models"] = list(self.models)
        return entry


def new_client_key(key_id: str, user: str, models: list[str] | None = None) -> ClientKey:
    """`molt_sk_` + 43 url-safe base64 characters (32 random bytes), like `molt key new`."""
    secret = "molt_sk_" + secrets.token_urlsafe(32)
    SECRETS.add(secret)
    return ClientKey(key_id, user, secret, tuple(models) if models is not None else None)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def make_jwt(claims: dict[str, Any], secret: str, alg: str = "HS256") -> str:
    """A compact JWS; `alg="none"` yields an unsigned token (which the data plane must refuse)."""
    header = {"alg": alg, "typ": "JWT"}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    if alg == "none":
        return signing_input + "."
    signature = hmac.new(secret.encode(), signing_input.encode(), _HMAC_DIGESTS[alg]).digest()
    return f"{signing_input}.{_b64url(signature)}"


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Process:
    """A child process whose stdout+stderr go to a log file; killed by `kill()` (always at teardown)."""

    def __init__(self, argv: list[str | Path], log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in kill()
        env = {**os.environ, "RUST_BACKTRACE": "1", **(extra_env or {})}
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._log.close()

    def describe(self) -> str:
        return f"{' '.join(self.argv)} (pid {self.pid}, exit {self.popen.poll()})\n--- log ---\n{self.logs()[-4000:]}"


def read_ready_file(process: Process, path: Path, what: str, timeout: float = STARTUP_TIMEOUT) -> dict[str, str]:
    """Wait for `process` to write its `--ready-file` at `path` and return its listeners (name -> "host:port").
    Fails with the process's log if it exits first or the file does not appear within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if not process.alive():
            raise AssertionError(f"{what} exited before it was ready:\n{process.describe()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} wrote no ready file at {path} in {timeout}s:\n{process.describe()}")
        time.sleep(0.02)
    # Written whole (temp file + rename): once it exists, it is complete.
    return json.loads(path.read_text())["listeners"]


def start_server(
    argv: list[str | Path], log_path: Path, what: str, extra_env: dict[str, str] | None = None
) -> tuple[Process, dict[str, str]]:
    """Start a `molt` server subcommand (listening on port 0) with `--ready-file` beside its log; return the
    process and its listeners once all are bound."""
    ready = log_path.with_suffix(".ready.json")
    ready.unlink(missing_ok=True)
    process = Process([*argv, "--ready-file", ready], log_path, extra_env)
    return process, read_ready_file(process, ready, what)


def require_binary(path: Path, what: str) -> Path:
    if not path.is_file():
        raise AssertionError(
            f"{what} not found at {path}; run scripts/test, or build with "
            "`cargo build --workspace --bins --examples` and set MOLT_BIN / MOLT_MOCK_BIN"
        )
    return path


class MockProvider:
    """The in-repo OpenAI/Anthropic-compatible mock upstream, with its request-recording endpoint."""

    def __init__(self, log_dir: Path) -> None:
        if MOLT_MOCK_BIN.is_file():
            argv: list[str | Path] = [MOLT_MOCK_BIN, "127.0.0.1:0"]
        else:
            argv = [require_binary(MOLT_BIN, "molt binary"), "mock-provider", "--listen", "127.0.0.1:0"]
        self.process, listeners = start_server(argv, log_dir / "mock_provider.log", "mock provider")
        self.port = int(listeners["http"].rsplit(":", 1)[1])
        self.url = f"http://{listeners['http']}"
        self.base_url = f"{self.url}/v1"

    def requests(self) -> list[dict[str, Any]]:
        """Every request the mock received since the last clear(), oldest first."""
        return get_ok(f"{self.url}/_mock/requests").json()

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_mock/requests", timeout=5).raise_for_status()

    def only_request(self) -> dict[str, Any]:
        records = self.requests()
        assert len(records) == 1, f"expected exactly one upstream request, mock saw {len(records)}: {records}"
        return records[0]

    def stop(self) -> None:
        self.process.kill()


# --------------------------------------------------------------------------------------------
# Data plane
# --------------------------------------------------------------------------------------------


def to_toml(config: dict[str, Any] | str) -> str:
    return config if isinstance(config, str) else tomli_w.dumps(config)


class Dataplane:
    """A running `molt dataplane --config FILE`, started from a dict or TOML text, ready on /readyz."""

    def __init__(self, config: dict[str, Any] | str, workdir: Path, config_path: Path | None = None) -> None:
        """`config_path`: run from that file, which already holds `config` (else it is written to workdir)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        if config_path is None:
            config_path = workdir / "molt.toml"
            config_path.write_text(to_toml(config))
        self.config_path = config_path
        parsed = tomllib.loads(to_toml(config))
        self.config = parsed
        tls = parsed["server"].get("tls")
        self.cert_file = Path(tls["cert_file"]) if tls else None
        self.usage_file = Path(parsed["usage"]["file"])
        # Listeners on port 0; the ready file says which ports they got.
        self.process, listeners = start_server(
            [require_binary(MOLT_BIN, "molt binary"), "dataplane", "--config", self.config_path],
            workdir / "dataplane.log",
            "data plane",
        )
        self.listeners = listeners
        self.url = f"http://{listeners['http']}"
        self.admin_url = f"http://{listeners['admin']}"
        self.tls_url = f"https://{listeners['https']}" if "https" in listeners else None
        wait_until(self._ready, f"data plane /readyz at {self.admin_url}", STARTUP_TIMEOUT)

    def _ready(self) -> bool:
        if not self.process.alive():
            raise AssertionError(f"data plane exited during startup:\n{self.process.describe()}")
        try:
            return httpx.get(f"{self.admin_url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    # -- observation --

    def logs(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.process.logs()

    def usage_events(self) -> list[dict[str, Any]]:
        if not self.usage_file.exists():
            return []
        lines = self.usage_file.read_text().splitlines()
        # The last line may be mid-write; only complete lines are events.
        return [json.loads(line) for line in lines if line.strip().endswith("}")]

    def usage_event(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The single usage event recorded for `request_id` (waits for it to be written)."""

        def find() -> list[dict[str, Any]]:
            return [e for e in self.usage_events() if e.get("request_id") == request_id]

        events = wait_until(find, f"usage event for {request_id}", timeout)
        time.sleep(0.05)  # a duplicate would be written right after; catch it
        events = find()
        assert len(events) == 1, f"expected one usage event for {request_id}, got {events}"
        return events[0]

    def metrics(self) -> str:
        return get_ok(f"{self.admin_url}/metrics").text

    def metric_value(self, name: str) -> float:
        """Sum of all samples of metric `name` (any labels); 0 when absent."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # -- control --

    def write_config(self, config: dict[str, Any] | str) -> None:
        """Replace the config file atomically (as editors and config pushes do)."""
        staging = self.config_path.with_suffix(".toml.new")
        staging.write_text(to_toml(config))
        os.replace(staging, self.config_path)

    def reload(self, config: dict[str, Any] | str) -> None:
        """Write the new config and send SIGHUP."""
        self.write_config(config)
        if isinstance(config, dict):
            self.config = config
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """SIGTERM: drain in-flight streams within server.grace_period, then exit 0."""
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()

    def tls_context(self) -> ssl.SSLContext:
        """Trusts the data plane's (self-signed) certificate only."""
        assert self.cert_file is not None, "this data plane has no [server.tls]"
        assert self.cert_file.is_file(), f"no certificate at {self.cert_file} (self_signed = true should write it)"
        return ssl.create_default_context(cafile=str(self.cert_file))


StartDataplane = Callable[[dict[str, Any] | str], Dataplane]
"""The `start_dataplane` fixture: start a data plane from a config dict or TOML text."""


class DataplaneFleet:
    """Starts data planes and guarantees they die at teardown, then checks their logs for secrets."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Dataplane] = []

    def start(self, config: dict[str, Any] | str) -> Dataplane:
        dataplane = Dataplane(config, self.root / f"dataplane-{len(self.started)}")
        self.started.append(dataplane)
        return dataplane

    def shutdown(self) -> None:
        for dataplane in self.started:
            dataplane.kill()
        for dataplane in self.started:
            assert_no_secrets(dataplane.logs(), f"data plane log {dataplane.process.log_path}")


# --------------------------------------------------------------------------------------------
# The standard world: one mock provider, master keys, client keys, and configs built on them
# --------------------------------------------------------------------------------------------

JWT_ISSUER = "molt-test"

CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
RENAMED_MODEL = "house-model"  # upstream_name = RENAMED_UPSTREAM
RENAMED_UPSTREAM = "mock-house-v1"
FLAKY_MODEL = "flaky"  # upstream answers 500, falls back to CHAT_MODEL
UNREACHABLE_MODEL = "unreachable"  # provider on a closed port
ALL_MODELS = [CHAT_MODEL, EMBEDDING_MODEL, ANTHROPIC_MODEL, RENAMED_MODEL, FLAKY_MODEL, UNREACHABLE_MODEL]


@dataclass
class World:
    """Everything a config is made of. One per test session; configs are cheap to derive."""

    mock: MockProvider
    openai_masters: list[str] = field(default_factory=lambda: [new_secret("sk-master-openai-") for _ in range(2)])
    anthropic_masters: list[str] = field(default_factory=lambda: [new_secret("sk-ant-master-")])
    dead_master: str = field(default_factory=lambda: new_secret("sk-master-dead-"))
    jwt_secret: str = field(default_factory=lambda: new_secret("jwt-secret-at-least-32-bytes-long-"))
    full_key: ClientKey = field(default_factory=lambda: new_client_key("k-full", "user-full"))
    mini_key: ClientKey = field(default_factory=lambda: new_client_key("k-mini", "user-mini", [CHAT_MODEL]))

    @property
    def master_keys(self) -> list[str]:
        return self.openai_masters + self.anthropic_masters + [self.dead_master]

    def masters_for(self, provider: str) -> list[str]:
        return {"mock-openai": self.openai_masters, "mock-anthropic": self.anthropic_masters}[provider]

    def jwt(self, sub: str = "jwt-user", ttl: int = 300, alg: str = "HS256", **claims: Any) -> str:
        body = {"iss": JWT_ISSUER, "sub": sub, "exp": int(time.time()) + ttl, **claims}
        return make_jwt(body, self.jwt_secret, alg)

    def config(self, workdir: Path, *, keys: list[ClientKey] | None = None, tls: bool = True) -> dict[str, Any]:
        """A complete data plane config on fresh ports, routing to the mock provider."""
        workdir.mkdir(parents=True, exist_ok=True)
        server: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "threads": 2,
            "grace_period": "5s",
            "client_body_timeout": "10s",
            "upstream_connect_timeout": "2s",
            "upstream_read_timeout": "30s",
        }
        if tls:
            server["tls"] = {
                "listen": "127.0.0.1:0",
                "cert_file": str(workdir / "tls" / "cert.pem"),
                "key_file": str(workdir / "tls" / "key.pem"),
                "self_signed": True,
            }
        return {
            "version": 1,
            "server": server,
            "admin": {"listen": "127.0.0.1:0"},
            "log": {"format": "json"},
            "usage": {"file": str(workdir / "usage.jsonl")},
            "auth": {"jwt": {"issuer": JWT_ISSUER, "algorithm": "HS256", "secret": self.jwt_secret}},
            "keys": [k.config_entry() for k in (keys if keys is not None else [self.full_key, self.mini_key])],
            "providers": [
                {"name": "mock-openai", "kind": "openai", "base_url": self.mock.base_url, "keys": self.openai_masters},
                {
                    "name": "mock-anthropic",
                    "kind": "anthropic",
                    "base_url": self.mock.base_url,
                    "keys": self.anthropic_masters,
                },
                {
                    "name": "dead",
                    "kind": "openai",
                    "base_url": f"http://127.0.0.1:{refused_port()}/v1",
                    "keys": [self.dead_master],
                },
            ],
            "models": [
                {"name": CHAT_MODEL, "provider": "mock-openai", "aliases": ["mini"]},
                {"name": EMBEDDING_MODEL, "provider": "mock-openai"},
                {"name": RENAMED_MODEL, "provider": "mock-openai", "upstream_name": RENAMED_UPSTREAM},
                {"name": ANTHROPIC_MODEL, "provider": "mock-anthropic"},
                {
                    "name": FLAKY_MODEL,
                    "provider": "mock-openai",
                    "upstream_name": "mock-error-500",
                    "fallbacks": [CHAT_MODEL],
                },
                {"name": UNREACHABLE_MODEL, "provider": "dead"},
            ],
        }


# --------------------------------------------------------------------------------------------
# Checks shared by the SDK, large-body and bad-input tests
# --------------------------------------------------------------------------------------------


def assert_upstream_got_master(record: dict[str, Any], masters: list[str], client_secret: str) -> None:
    """The mock saw one of the provider's master keys, and no trace of the client's credential."""
    presented = record.get("x_api_key") or (record.get("authorization") or "").removeprefix("Bearer ")
    assert presented in masters, f"upstream got credential {presented[:12]!r}..., not a master key"
    assert client_secret not in json.dumps(record), "the client's credential reached the upstream"


def assert_usage_recorded(
    event: dict[str, Any],
    record: dict[str, Any],
    *,
    key: ClientKey,
    model: str,
    provider: str,
    route: str,
    stream: bool,
    status: int = 200,
) -> None:
    """The usage event matches the request and the usage the mock reported."""
    expected = {"key_id": key.id, "user_id": key.user, "model": model, "provider": provider, "stream": stream}
    assert {k: event.get(k) for k in expected} == expected
    assert event["status"] == status
    # The route is recorded by its dotted name: "/v1/chat/completions" -> "chat.completions".
    assert event["route"] == route.removeprefix("/v1/").replace("/", "."), event["route"]
    assert isinstance(event["duration_ms"], (int, float)) and event["duration_ms"] >= 0
    upstream_usage = record["usage"]
    assert upstream_usage is not None, "mock reported no usage for this request"
    assert (event["input_tokens"], event["output_tokens"]) == (
        upstream_usage["input_tokens"],
        upstream_usage["output_tokens"],
    )
    assert event["estimated"] is False


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body = response.json()
    error = body.get("error")
    assert isinstance(error, dict), f"not an OpenAI error body: {body}"
    assert isinstance(error.get("message"), str) and error["message"]
    assert isinstance(error.get("type"), str) and error["type"]
    assert "code" in error
    return error


def assert_anthropic_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body = response.json()
    assert body.get("type") == "error", f"not an Anthropic error body: {body}"
    error = body.get("error")
    assert isinstance(error, dict)
    assert isinstance(error.get("type"), str) and error["type"]
    assert isinstance(error.get("message"), str) and error["message"]
    return error


# --------------------------------------------------------------------------------------------
# SSE
# --------------------------------------------------------------------------------------------


def sse_data(body: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order (multi-line data joined with newlines)."""
    payloads: list[str] = []
    for event in body.decode().replace("\r\n", "\n").split("\n\n"):
        lines = [line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
        if lines:
            payloads.append("\n".join(lines))
    return payloads


def sse_json(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(data) for data in sse_data(body) if data != "[DONE]"]


# --------------------------------------------------------------------------------------------
# HTTP clients that record the wire
# --------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One HTTP exchange as the client saw it."""

    method: str
    url: str
    status: int
    http_version: str
    headers: httpx2.Headers
    body: bytearray = field(default_factory=bytearray)


class _TeeStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, sink: bytearray) -> None:
        self._inner = inner
        self._sink = sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._sink.extend(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _RecordingTransport(httpx2.BaseTransport):
    def __init__(self, wire: Wire, inner: httpx2.BaseTransport) -> None:
        self._wire = wire
        self._inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self._inner.handle_request(request)
        exchange = Exchange(
            method=request.method,
            url=str(request.url),
            status=response.status_code,
            http_version=response.extensions.get("http_version", b"").decode(),
            headers=response.headers,
        )
        self._wire.exchanges.append(exchange)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_TeeStream(response.stream, exchange.body),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        self._inner.close()


@dataclass
class Wire:
    """Raw responses seen by SDK clients built by `Clients`."""

    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def last(self) -> Exchange:
        assert self.exchanges, "no HTTP exchange recorded"
        return self.exchanges[-1]

    def assert_clean(self, http_version: str | None = None) -> None:
        """Every response had an x-request-id, leaked no secret, and used `http_version` if given."""
        for ex in self.exchanges:
            assert ex.headers.get("x-request-id"), f"{ex.method} {ex.url}: no x-request-id header"
            assert_no_secrets(str(list(ex.headers.multi_items())), f"headers of {ex.method} {ex.url}")
            assert_no_secrets(bytes(ex.body), f"body of {ex.method} {ex.url}")
            if http_version:
                assert ex.http_version == http_version, f"{ex.url} used {ex.http_version}, not {http_version}"


class Clients:
    """Builds openai/anthropic SDK clients for one data plane endpoint (plain HTTP, or TLS with h2)."""

    def __init__(self, dataplane: Dataplane, *, tls: bool) -> None:
        self.dataplane = dataplane
        self.tls = tls
        self.base_url = dataplane.tls_url if tls else dataplane.url
        assert self.base_url, "TLS requested but the data plane has no [server.tls]"
        self.expected_http_version = "HTTP/2" if tls else "HTTP/1.1"
        self.wire = Wire()
        self._http_clients: list[httpx2.Client] = []

    def _http_client(self) -> httpx2.Client:
        if self.tls:
            inner = httpx2.HTTPTransport(http2=True, verify=self.dataplane.tls_context())
        else:
            inner = httpx2.HTTPTransport()
        client = httpx2.Client(transport=_RecordingTransport(self.wire, inner), timeout=REQUEST_TIMEOUT)
        self._http_clients.append(client)
        return client

    def openai(self, credential: ClientKey | str) -> openai.OpenAI:
        secret = credential.secret if isinstance(credential, ClientKey) else credential
        return openai.OpenAI(
            api_key=secret, base_url=f"{self.base_url}/v1", max_retries=0, http_client=self._http_client()
        )

    def anthropic(self, credential: ClientKey | str) -> anthropic.Anthropic:
        secret = credential.secret if isinstance(credential, ClientKey) else credential
        return anthropic.Anthropic(
            api_key=secret, base_url=self.base_url, max_retries=0, http_client=self._http_client()
        )

    def close(self) -> None:
        for client in self._http_clients:
            client.close()


# --------------------------------------------------------------------------------------------
# Control plane
# --------------------------------------------------------------------------------------------

CONTROLPLANE_TOKEN_ENV = "MOLT_E2E_DATAPLANE_TOKEN"
"""The variable data planes read their control-plane token from (`[control_plane] token_env`)."""


class ControlPlane:
    """`molt controlplane` on a SQLite file in `workdir`, first started on port 0; `kill()` + `start()` restarts it
    on the port it got and the same DB."""

    def __init__(
        self,
        workdir: Path,
        *,
        poll_hold: str = "30s",
        extra_config: dict[str, Any] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """`extra_config` adds top-level sections (e.g. `fleet`); `extra_env` adds variables they name."""
        workdir.mkdir(parents=True, exist_ok=True)
        self._extra_env = dict(extra_env or {})
        self.workdir = workdir
        self.port = 0
        self.url = ""
        self.db_path = workdir / "controlplane.db"
        self.admin_token = new_secret("molt-admin-")
        self.dataplane_token = new_secret("molt-dataplane-")
        self.jwt_secret = new_secret("cp-jwt-secret-at-least-32-bytes-")
        self._encryption_key = secrets.token_hex(32)
        SECRETS.add(self._encryption_key)
        self.config_path = workdir / "controlplane.toml"
        self._config = {
            "database_url": f"sqlite://{self.db_path}?mode=rwc",
            "secrets": {
                "encryption_key_env": "MOLT_E2E_CP_KEY",
                "dataplane_token_env": "MOLT_E2E_CP_DATAPLANE_TOKEN",
                "bootstrap_admin_token_env": "MOLT_E2E_CP_ADMIN_TOKEN",
            },
            "jwt": {"issuer": "molt-e2e", "secret_env": "MOLT_E2E_CP_JWT"},
            "tuning": {"poll_hold": poll_hold},
            **(extra_config or {}),
        }
        self.processes: list[Process] = []
        self.start()

    @property
    def process(self) -> Process:
        return self.processes[-1]

    def start(self) -> None:
        env = {
            "MOLT_E2E_CP_KEY": self._encryption_key,
            "MOLT_E2E_CP_DATAPLANE_TOKEN": self.dataplane_token,
            "MOLT_E2E_CP_ADMIN_TOKEN": self.admin_token,
            "MOLT_E2E_CP_JWT": self.jwt_secret,
            **self._extra_env,
        }
        # A restart takes back the port the first start got (data planes hold its URL); nothing else can have
        # been given it meanwhile unless the kernel handed it out as an ephemeral port in between.
        self.config_path.write_text(tomli_w.dumps({"listen": f"127.0.0.1:{self.port}", **self._config}))
        log = self.workdir / f"controlplane-{len(self.processes)}.log"
        argv: list[str | Path] = [require_binary(MOLT_BIN, "molt binary"), "controlplane", "--config", self.config_path]
        process, listeners = start_server(argv, log, "control plane", extra_env=env)
        self.processes.append(process)
        self.port = int(listeners["api"].rsplit(":", 1)[1])
        self.url = f"http://{listeners['api']}"

    def set_env(self, **env: str) -> None:
        """Environment for the next start(), over what it was made with (e.g. a rotated at-rest key)."""
        self._extra_env.update(env)

    def api(self, method: str, path: str, json_body: Any = None, expect: int | None = None) -> Any:
        """Call `/api/v1{path}` as the bootstrap admin; check the status if `expect` is given; return the JSON."""
        response = httpx.request(
            method,
            f"{self.url}/api/v1{path}",
            json=json_body,
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        if expect is not None:
            assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def dataplane_section(self, workdir: Path, ship_interval: str = "200ms") -> dict[str, Any]:
        """A data plane's `[control_plane]` section pointing here (token in CONTROLPLANE_TOKEN_ENV)."""
        return {
            "url": self.url,
            "token_env": CONTROLPLANE_TOKEN_ENV,
            "cache_file": str(workdir / "snapshot.json"),
            "spool_dir": str(workdir / "spool"),
            "ship_interval": ship_interval,
        }

    def logs(self) -> str:
        return "".join(p.logs() for p in self.processes)

    def kill(self) -> None:
        for process in self.processes:
            process.kill()


def serve_controlplane(cp: ControlPlane) -> Iterator[ControlPlane]:
    """Yield `cp` (to a fixture's test), then kill it and check its log holds no secret."""
    try:
        yield cp
    finally:
        cp.kill()
        assert_no_secrets(cp.logs(), "control plane log")


# --------------------------------------------------------------------------------------------
# Fakes of Fly Machines and Stripe (separate `molt` processes)
# --------------------------------------------------------------------------------------------


class FakeFly:
    """`molt fake-fly` on port 0, with its test hooks: `state()` (machines, volumes), `calls()`,
    `delay_next(...)`, `set_bots_healthy(...)` and Fly's own list-by-metadata."""

    def __init__(self, log_dir: Path, *, rate_limits: bool = True) -> None:
        self.token = new_secret("fly-token-")
        argv: list[str | Path] = [
            require_binary(MOLT_BIN, "molt binary"),
            "fake-fly",
            "--listen",
            "127.0.0.1:0",
            "--token",
            self.token,
            "--boot-delay-ms",
            "200",
        ]
        if not rate_limits:
            argv.append("--no-rate-limits")
        self.process, listeners = start_server(argv, log_dir / "fake_fly.log", "fake fly")
        self.url = f"http://{listeners['http']}"

    def state(self) -> dict[str, Any]:
        return get_ok(f"{self.url}/_fake/state").json()

    def calls(self) -> list[tuple[str, int]]:
        """Every Fly API call the fake received, in order, as (`METHOD /path`, status)."""
        return [(call, status) for call, status in get_ok(f"{self.url}/_fake/calls").json()]

    def delay_next(self, matching: str, ms: int) -> None:
        """Act on the next call whose `METHOD /path` contains `matching`, but answer it only `ms` ms later."""
        fault = {"kind": {"delay": ms}, "times": 1, "matching": matching}
        httpx.post(f"{self.url}/_fake/faults", json=fault, timeout=5).raise_for_status()

    def set_bots_healthy(self, healthy: bool) -> None:
        httpx.post(f"{self.url}/_fake/bots_healthy", json={"healthy": healthy}, timeout=5).raise_for_status()

    def machines_of_bot(self, app: str, bot_id: str) -> list[dict[str, Any]]:
        """Fly's own list-by-metadata (`GET /v1/apps/{app}/machines?metadata.molt_bot_id=`): live machines."""
        return get_ok(
            f"{self.url}/v1/apps/{app}/machines",
            params={"metadata.molt_bot_id": bot_id},
            headers={"authorization": f"Bearer {self.token}"},
        ).json()


class FakeStripe:
    """`molt fake-stripe` on port 0 (no rate limit), with its test hooks: `meter_events()`,
    `calls()` and `inject(kind, ...)` (see fakes/src/fake_stripe/mod.rs for the fault kinds)."""

    def __init__(self, log_dir: Path) -> None:
        self.api_key = new_secret("sk_test_")
        self.process, listeners = start_server(
            [require_binary(MOLT_BIN, "molt binary"), "fake-stripe", "--listen", "127.0.0.1:0", "--rate-limit", "0"],
            log_dir / "fake_stripe.log",
            "fake stripe",
            extra_env={"STRIPE_API_KEY": self.api_key},
        )
        self.url = f"http://{listeners['http']}"

    def _inspect(self) -> dict[str, Any]:
        return get_ok(f"{self.url}/_fake/meter_events").json()

    def meter_events(self) -> list[dict[str, Any]]:
        """Every meter event the fake stored, oldest first (`value` is a string, as Stripe returns it)."""
        return self._inspect()["data"]

    def calls(self) -> int:
        """Meter event calls that reached the endpoint (faults and replays included)."""
        return self._inspect()["calls"]

    def inject(self, kind: str, times: int = 1, **extra: Any) -> None:
        """Queue a fault for the next `times` meter event calls: fail, fail_saved, record_then_drop, slow."""
        body = {"kind": kind, "times": times, **extra}
        httpx.post(f"{self.url}/_fake/faults", json=body, timeout=5).raise_for_status()


def sign_stripe_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe sends: `t=<unix>,v1=hex(HMAC-SHA256(secret, "<t>.<payload>"))`."""
    t = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={signature}"


async def chat_once(ws: Any, text: str = "hi") -> list[dict[str, Any]]:
    """Send one chat message on a `/ws/chat` socket and collect every frame up to the `done` chunk."""
    await ws.send(json.dumps({"type": "message", "content": text}))
    frames = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        frames.append(frame)
        if frame.get("done") is True:
            return frames
