"""Session-wide fixtures: one private Tor network shared by every test that asks for it.

``tornet`` is created lazily (only when a test requests it) and torn down by PID at the end of
the session. Its size defaults to 10 authorities (= 10 HSDirs, so tor picks 8 of 10 for each
descriptor, which ring tests and Onionbalance (needs >= 6 HSDirs) rely on); set
``ONIONMESH_TORNET_AUTHORITIES`` to change it. A missing tor FAILS the fixture: never skipped.
"""

from __future__ import annotations

import os
import shutil

import pytest

from onionmesh.testnet import TorClient, TorNetwork

DEFAULT_TORNET_AUTHORITIES = 10


def require_tor() -> None:
    """Fail (never skip) when the tor binaries the harness needs are missing."""
    missing = [name for name in ("tor", "tor-gencert") if shutil.which(name) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found on PATH: install tor (apt-get install -y tor); "
            "tor tests are never skipped",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tornet(tmp_path_factory: pytest.TempPathFactory):
    """The session's private Tor network (authorities ready; add clients/services as needed)."""
    require_tor()
    n_authorities = int(os.environ.get("ONIONMESH_TORNET_AUTHORITIES", DEFAULT_TORNET_AUTHORITIES))
    network = TorNetwork(tmp_path_factory.mktemp("tornet"), n_authorities)
    network.start()
    try:
        yield network
    finally:
        network.stop()
        leftovers = network.leftover_pids()
        assert not leftovers, f"test network processes survived teardown: {leftovers}"


@pytest.fixture(scope="session")
def tornet_client(tornet: TorNetwork) -> TorClient:
    """One bootstrapped client of the session network, shared (do not stop it)."""
    return tornet.add_client("sessclient")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files that hold slow tests first, the longest (largest timeout) first.

    ``make test`` spreads whole files over pytest-xdist workers (``--dist loadfile``) in
    collection order; starting the long, mostly idle real-network files first, on different
    workers, keeps them from landing last on one worker and stretching the run. The order
    inside a file is kept.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    longest: dict[object, float] = {}
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is not None and marker.args:
            longest[item.path] = max(longest.get(item.path, 0.0), float(marker.args[0]))
    items.sort(key=lambda item: (item.path not in slow_files, -longest.get(item.path, 0.0)))
