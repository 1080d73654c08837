"""Rotating the cluster secret without downtime (``onionmesh rotate-secret``).

The cores: three roster-mode cores step through begin/commit/finish one node at a time,
in the worst order, and nobody ever misses a heartbeat or sees a peer suspect. The CLI:
the secret file's three steps, each accepted by ``keys check``.
"""

from __future__ import annotations

from pathlib import Path

from onionmesh.config import load_config
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.events import PeerDead, PeerSuspect
from onionmesh.mesh.membership import PeerState
from onionmesh.node.keyfiles import load_cluster_secrets
from tests.mesh.netloop import SECRET, Net, identity

from .helpers import make_cluster, onionmesh

CFG = MeshConfig(heartbeat_interval=1.0, lease_duration=3.0, lease_grace=0.5)
NEW = b"the-new-cluster-secret-0123456789"


def test_nodes_at_different_rotation_steps_keep_hearing_each_other():
    net = Net(CFG, roster=True, delay=0.01)
    for node_id in ("n1", "n2", "n3"):
        net.add(identity(node_id, priority={"n1": 300, "n2": 200, "n3": 100}[node_id]))
    net.run_until(10.0)
    publisher = net.publishers()
    assert publisher == ["n1"]
    # (The first contact's handshake leaves a few "unverified" ones: not the rotation's.)
    before = {n: dict(core.rejections) for n, core in net.cores.items()}
    steps = {
        "begin": (SECRET, [NEW]),
        "commit": (NEW, [SECRET]),
        "finish": (NEW, []),
    }
    t = 10.0
    for step in ("begin", "commit", "finish"):
        for node_id in ("n3", "n1", "n2"):  # one node at a time, the publisher in between
            current, accepted = steps[step]
            net.cores[node_id].set_cluster_secrets(current, accepted)
            t += 2.5  # more than two heartbeats at this step before the next node moves
            net.run_until(t)
            for core in net.cores.values():
                states = {p: r.state for p, r in core.membership.peers.items()}
                assert set(states.values()) == {PeerState.ALIVE}, (step, node_id, states)
    for node_id in net.cores:
        assert not net.of(node_id, PeerSuspect) and not net.of(node_id, PeerDead)
        assert dict(net.cores[node_id].rejections) == before[node_id]  # nothing refused
    assert net.publishers() == publisher  # the same publisher throughout


def test_without_the_overlap_the_nodes_do_not_hear_each_other():
    """Sanity for the test above: a node that jumps straight to the new secret is refused."""
    net = Net(CFG, roster=True, delay=0.01)
    for node_id in ("n1", "n2"):
        net.add(identity(node_id))
    net.run_until(5.0)
    net.cores["n2"].set_cluster_secrets(NEW)
    net.run_until(15.0)
    assert net.cores["n1"].rejections and net.of("n1", PeerDead)


def test_rotate_secret_steps_rewrite_the_secret_file(tmp_path: Path):
    config_path = make_cluster(tmp_path / "n1").files.config
    config = load_config(config_path)
    old, accepted = load_cluster_secrets(config)
    assert accepted == ()

    assert onionmesh("rotate-secret", "begin", "-c", str(config_path)).returncode == 0
    current, accepted = load_cluster_secrets(config)
    assert current == old and len(accepted) == 1 and accepted[0] != old
    new = accepted[0]
    assert onionmesh("keys", "check", "-c", str(config_path)).returncode == 0
    again = onionmesh("rotate-secret", "begin", "-c", str(config_path))
    assert again.returncode != 0 and "in progress" in again.stderr

    assert onionmesh("rotate-secret", "commit", "-c", str(config_path)).returncode == 0
    assert load_cluster_secrets(config) == (new, (old,))
    assert onionmesh("rotate-secret", "finish", "-c", str(config_path)).returncode == 0
    assert load_cluster_secrets(config) == (new, ())
    assert onionmesh("keys", "check", "-c", str(config_path)).returncode == 0
    secret_file = tmp_path / "n1" / "cluster_secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    for output in (again.stdout, again.stderr):
        assert new.hex() not in output and old.hex() not in output
