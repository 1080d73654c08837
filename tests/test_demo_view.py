"""The demo's live view and the cluster harness read typed status documents (no tor needed)."""

from __future__ import annotations

from pathlib import Path

from onionmesh.demo import HealWatcher, status_line
from onionmesh.status_document import decode_status
from onionmesh.testnet.node_cluster import ClusterNode, NodeCluster, cluster_ready, summarize


class _Running:
    """Stands in for a live ``Popen`` (only ``poll`` and ``pid`` are read)."""

    pid = 4242

    def poll(self) -> None:
        return None


def _cluster(tmp_path: Path) -> NodeCluster:
    cluster = NodeCluster(network=None, base_dir=tmp_path, n_nodes=2)  # type: ignore[arg-type]
    for node_id in ("n1", "n2"):
        node = ClusterNode(node_id, tmp_path / node_id, "127.0.0.1:1", 1)
        node.proc = _Running()  # type: ignore[assignment]
        cluster.nodes[node_id] = node
    return cluster


def _docs(carried: dict[str, int], age: float | None):
    base = {"master_address": "m.onion", "clock": {"verdict": "ok", "message": "ok"}}
    return {
        "n1": decode_status({
            **base, "node": {"id": "n1", "state": "running"},
            "cluster": {"role": "publisher", "publisher": "n1", "term": 2},
            "plan": {"count": 6, "per_period": {"5": 6}, "per_node": carried},
            "uploads": {"A" * 40: {"result": "uploaded", "age": 1.0, "at": 5.0}},
            "descriptor_age": age,
        }),
        "n2": decode_status({
            **base, "node": {"id": "n2", "state": "running"},
            "cluster": {"role": "standby", "publisher": "n1", "term": 2},
            "peers": {"n1": {"state": "alive", "address": "127.0.0.1:1", "role": "publisher"}},
        }),
    }


def test_status_line_summary_and_readiness(tmp_path: Path):
    cluster = _cluster(tmp_path)
    docs = _docs({"n1": 3, "n2": 3}, 3.0)
    assert cluster.publishers(docs) == {"n1"}
    assert cluster_ready(cluster, docs)
    line = status_line(cluster, docs)
    assert line.startswith("n1 publisher | n2 standby || descriptor intro points: n1 3, n2 3")
    assert "HSDirs ok 1/1" in line
    assert "n2: standby, publisher n1 (term 2), peers [n1:alive]" in summarize(docs)
    assert not cluster_ready(cluster, _docs({"n1": 3, "n2": 0}, 3.0))  # n2 not carried
    assert not cluster_ready(cluster, _docs({"n1": 3, "n2": 3}, None))  # never accepted


def test_heal_watcher_reports_publisher_and_carried_nodes_once(tmp_path: Path):
    cluster = _cluster(tmp_path)
    said: list[str] = []
    watcher = HealWatcher(cluster, said.append, restart=False)
    watcher.update(_docs({"n1": 3, "n2": 3}, 3.0))
    watcher.update(_docs({"n1": 3, "n2": 3}, 3.0))
    watcher.update(_docs({"n1": 3, "n2": 0}, 3.0))
    assert [s.split(" ", 1)[1] for s in said] == [
        "publisher is now n1 (term 2)",
        "the descriptor now carries intro points of n1, n2",
        "the descriptor now carries intro points of n1",
    ]
