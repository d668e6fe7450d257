"""Per-rank step times and the straggler verdict (``ampflow.engine.throughput``), pure parts.

The gather itself is one sum all-reduce through ``ampflow.engine.parallel.all_reduce``, run by every
training with more than one process (``ThroughputWindow.figures``); here it is its one-process path.

    .venv/bin/python -m pytest tests/test_rank_times.py -q
"""

from __future__ import annotations

import pytest

from ampflow.engine.throughput import per_rank_step_p50, straggler_rank


@pytest.mark.parametrize(
    "per_rank,p90,p50,expected",
    [
        ([0.100, 0.101, 0.160, 0.099], 0.110, 0.100, 2),  # 59 ms behind the next, spread 10 ms
        ([0.100, 0.101, 0.105, 0.099], 0.110, 0.100, None),  # 4 ms: within the spread
        ([0.100, 0.160, 0.158, 0.099], 0.110, 0.100, None),  # two slow ranks: neither stands apart
        ([0.300, 0.100], 0.110, 0.100, 0),  # rank 0 itself can be the straggler
        ([0.100, None, 0.160], 0.110, 0.100, 2),  # a rank that timed nothing is left out
        ([0.160], 0.110, 0.100, None),  # one rank: nothing to compare with
        ([0.100, 0.160], None, None, None),  # no spread known: no verdict
        (None, 0.110, 0.100, None),
    ],
)
def test_straggler_is_named_only_beyond_the_spread(per_rank, p90, p50, expected) -> None:
    assert straggler_rank(per_rank, p90, p50) == expected


def test_one_process_reports_its_own_p50() -> None:
    assert per_rank_step_p50([0.3, 0.1, 0.2], "cpu") == [pytest.approx(0.2)]
    assert per_rank_step_p50([], "cpu") == [None]


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "1"}, "node-1"),
        ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "0"}, None),  # one node: names unchanged
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MLFLOW_SYSTEM_METRICS_NODE_ID": "gpu-a"}, "gpu-a"),
        ({}, None),
    ],
)
def test_system_metrics_node_id(monkeypatch: pytest.MonkeyPatch, env: dict, expected: str | None) -> None:
    from ampflow.tracking.tracker import system_metrics_node_id

    for key in (
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "PET_NODE_RANK",
        "MLFLOW_SYSTEM_METRICS_NODE_ID",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert system_metrics_node_id() == expected


def test_another_node_monitors_rank_0s_run_under_its_node_id(tmp_path, monkeypatch) -> None:
    """Node 1's first process of a 2-node job, given rank 0's run id: MLflow's real
    SystemMetricsMonitor is made for that run id with node id ``node-1`` (so its metrics are named
    ``system/node-1/...``), started, and finished when the tracker closes. Its sampling thread is left
    out (start/finish recorded instead): it would only wait for and post to a server. Without a
    process group there is no run id to share, and a non-main rank tracks nothing."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from ampflow import tracking

    calls = []
    monkeypatch.setattr(SystemMetricsMonitor, "start", lambda self: calls.append("start"))
    monkeypatch.setattr(SystemMetricsMonitor, "finish", lambda self: calls.append("finish"))

    # a server that is never reached: the monitor writes only after its first 10 s sample
    uri = "http://127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key, value in {
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_RANK": "1",
        "LOCAL_RANK": "0",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_NODE_ID", raising=False)
    monkeypatch.setenv("AMPFLOW_SYSTEM_METRICS", "1")  # the test suite switches it off elsewhere
    run_id = "0" * 32  # rank 0's run

    assert type(tracking.start_run("train", rank=1)) is tracking.NullTracker
    node = tracking._node_metrics(run_id)
    monitor = node.node.monitor
    try:
        assert (monitor._run_id, monitor.node_id) == (run_id, "node-1")
    finally:
        node.close()
    assert node.node.monitor is None and calls == ["start", "finish"]
