"""TorNetwork argument handling that needs no tor process."""

from __future__ import annotations

import pytest

from onionmesh.testnet import TestnetError, TorNetwork, authorities_for_hsdirs


@pytest.mark.parametrize(
    ("hsdirs", "authorities"), [(1, 5), (5, 5), (6, 6), (8, 8), (9, 10), (10, 10), (12, 12)]
)
def test_more_than_8_hsdirs_means_at_least_10_authorities(hsdirs, authorities):
    assert authorities_for_hsdirs(hsdirs) == authorities


@pytest.mark.parametrize("bad", [0, -1, 21, True, "5", None])
def test_bad_hsdir_counts_are_typed_errors(bad):
    with pytest.raises(TestnetError):
        authorities_for_hsdirs(bad)


def test_for_hsdirs_builds_a_network_of_that_size(tmp_path):
    assert TorNetwork.for_hsdirs(tmp_path, 9).n_authorities == 10


@pytest.mark.parametrize("bad", [3, 21, "5", 5.0])
def test_bad_authority_counts_are_typed_errors(tmp_path, bad):
    with pytest.raises(TestnetError, match="n_authorities"):
        TorNetwork(tmp_path, bad)


def test_foreign_non_empty_directory_is_never_wiped(tmp_path):
    keep = tmp_path / "precious.txt"
    keep.write_text("user data")
    network = TorNetwork(tmp_path, 5)
    with pytest.raises(TestnetError, match="refusing"):
        network.start()
    assert keep.read_text() == "user data"


def test_nodes_cannot_be_added_before_start(tmp_path):
    network = TorNetwork(tmp_path / "net", 5)
    with pytest.raises(TestnetError, match="start the network"):
        network.add_client("client0")
    with pytest.raises(TestnetError, match="nickname"):
        network.add_client("bad name")
