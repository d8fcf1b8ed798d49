"""Fixtures for Molt's end-to-end tests.

- `world` (session): the mock provider process plus generated master keys, client keys and JWT secret.
- `mock` (function): the session's mock provider with its request records cleared.
- `start_dataplane` (function): factory `start_dataplane(config_dict_or_toml) -> Dataplane`;
  every data plane it starts is killed at teardown and its logs are checked for secrets.
- `module_dataplane` (module): one data plane with the standard config, shared by a module's tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Clients, Dataplane, DataplaneFleet, MockProvider, StartDataplane, World, assert_no_secrets


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    mock = MockProvider(tmp_path_factory.mktemp("mock"))
    try:
        yield World(mock)
    finally:
        mock.stop()
        assert_no_secrets(mock.process.logs(), "mock provider log")


@pytest.fixture
def mock(world: World) -> MockProvider:
    world.mock.clear()
    return world.mock


@pytest.fixture
def start_dataplane(tmp_path: Path) -> Iterator[StartDataplane]:
    fleet = DataplaneFleet(tmp_path)
    try:
        yield fleet.start
    finally:
        fleet.shutdown()


@pytest.fixture(scope="module")
def module_dataplane(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataplane]:
    root = tmp_path_factory.mktemp("module-dataplane")
    fleet = DataplaneFleet(root)
    try:
        yield fleet.start(world.config(root / "config"))
    finally:
        fleet.shutdown()


def _clients(dataplane: Dataplane, tls: bool) -> Iterator[Clients]:
    clients = Clients(dataplane, tls=tls)
    try:
        yield clients
    finally:
        clients.close()
    clients.wire.assert_clean(clients.expected_http_version)


@pytest.fixture(params=["http1", "tls-h2"])
def clients(request: pytest.FixtureRequest, module_dataplane: Dataplane) -> Iterator[Clients]:
    """SDK client factory over plain HTTP/1.1 and over TLS with HTTP/2; checks the wire afterwards."""
    yield from _clients(module_dataplane, tls=request.param == "tls-h2")


@pytest.fixture
def http_clients(module_dataplane: Dataplane) -> Iterator[Clients]:
    """SDK client factory over plain HTTP/1.1 only."""
    yield from _clients(module_dataplane, tls=False)
