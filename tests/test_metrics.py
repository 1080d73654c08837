"""Node metrics: values recorded are what the HTTP exporter serves."""

import urllib.request

from onionmesh.metrics import NodeMetrics


def test_exporter_serves_recorded_values():
    metrics = NodeMetrics()
    metrics.set_peer_counts({"alive": 2, "dead": 1})
    metrics.record_upload("A" * 40, ok=True)
    metrics.record_upload("A" * 40, ok=False)
    metrics.record_publish("peer_dead", {100: 6, 101: 5}, at=1_700_000_000.0)
    metrics.record_rejection("replayed")
    server = metrics.serve("127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'onionmesh_peers{state="alive"} 2.0' in text
    assert 'onionmesh_peers{state="suspect"} 0.0' in text
    assert 'onionmesh_peers{state="dead"} 1.0' in text
    assert f'onionmesh_hsdir_uploads_total{{hsdir="{"A" * 40}",result="failed"}} 1.0' in text
    assert 'onionmesh_republishes_total{reason="peer_dead"} 1.0' in text
    assert 'onionmesh_intro_points_published{period="100"} 6.0' in text
    assert 'onionmesh_messages_rejected_total{reason="replayed"} 1.0' in text


def test_two_nodes_do_not_share_counters():
    first, second = NodeMetrics(), NodeMetrics()
    first.record_rejection("forged")
    assert first.registry.get_sample_value(
        "onionmesh_messages_rejected_total", {"reason": "forged"}) == 1.0
    assert second.registry.get_sample_value(
        "onionmesh_messages_rejected_total", {"reason": "forged"}) is None
