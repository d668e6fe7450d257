"""``ampflow.kube.client`` and ``ampflow launch`` against a loopback Kubernetes API.

No API server can run here; ``tests/kube_loopback.py`` is the stand-in: a real HTTP server on
127.0.0.1 answering the exact paths, status codes and ``Status`` bodies of the Kubernetes API for
PyTorchJob/TrainJob custom objects, pods and pod logs, with a scripted operator that moves each job
through its conditions and creates pods named and labelled as the real operators do. The client under
test is the real ``kubernetes`` Python client, pointed at it through a ``Configuration`` (and, for the
CLI, through a kubeconfig file). Scripts advance one step per status poll, so nothing here depends on
wall-clock time: the queue timeout and run deadline tests drive the client's clock by its own polls
(:class:`PollClock`), so that a Pending job is held for a counted number of polls, not for seconds.

    .venv/bin/python -m pytest tests/test_kube_client.py -q
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from ampflow.cli import main
from ampflow.kube import LaunchSpec, build_manifest
from ampflow.kube.client import JobClient, LaunchError, job_state
from tests.kube_loopback import LoopbackCluster, Script

POLL = 0.02


@pytest.fixture
def cluster() -> Iterator[LoopbackCluster]:
    with LoopbackCluster() as c:
        yield c


def _api(cluster: LoopbackCluster) -> k8s.ApiClient:
    conf = k8s.Configuration()
    conf.host = cluster.host
    return k8s.ApiClient(conf)


def _jobs(cluster: LoopbackCluster, out: io.StringIO, **kw: Any) -> JobClient:
    return JobClient(_api(cluster), poll_interval=POLL, out=out, **kw)


def _manifest(api: str = "pytorchjob", nodes: int = 2, **kw: Any) -> dict[str, Any]:
    return build_manifest(
        LaunchSpec(
            recipe="tweets-bow",
            data="/data/t",
            out="/data/runs/a",
            nodes=nodes,
            gpus_per_node=1,
            image="reg/ampflow:0.1",
            api=api,
            **kw,
        )
    )


PLURAL = {"pytorchjob": "pytorchjobs", "trainjob": "trainjobs"}


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_success_streams_master_log(cluster: LoopbackCluster, api: str) -> None:
    cluster.next_script = Script(master_log=["step 1 loss 1.0", "step 2 loss 0.5", "result written"])
    m = _manifest(api, nodes=3)
    out = io.StringIO()
    outcome = _jobs(cluster, out).run(m, timeout=60)
    text = out.getvalue()
    assert (outcome.status, outcome.exit_code, outcome.reattached, outcome.deleted) == (
        "Succeeded",
        0,
        False,
        False,
    )
    assert cluster.count("POST") == 1 and cluster.count("DELETE") == 0
    # the master's lines, in order, prefixed with the master pod (not a worker's "worker up")
    streamed = [line.split("] ", 1)[1] for line in text.splitlines() if line.startswith("[")]
    assert streamed == ["step 1 loss 1.0", "step 2 loss 0.5", "result written"]
    master = "-master-0]" if api == "pytorchjob" else "-node-0-0-"
    assert all(master in line for line in text.splitlines() if line.startswith("["))
    assert cluster.count("GET", "follow=true&timestamps=true") >= 1
    assert "Running" in text and ("Succeeded" if api == "pytorchjob" else "Complete") in text


def test_unschedulable_master_is_reported_once(cluster: LoopbackCluster) -> None:
    why = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    cluster.next_script = Script(unschedulable=why, running_at=30, end_at=32)
    out = io.StringIO()
    outcome = _jobs(cluster, out).run(_manifest(), timeout=60)
    assert outcome.exit_code == 0
    assert out.getvalue().count(f"not scheduled: {why}") == 1


def test_failure_reports_reason_and_log_tail(cluster: LoopbackCluster) -> None:
    log = [f"step {i}" for i in range(120)] + ["RuntimeError: CUDA out of memory"]
    cluster.next_script = Script(
        outcome="Failed",
        reason="PyTorchJobFailed",
        message="PyTorchJob ml/x is failed because 1 Master replica(s) failed.",
        master_log=log,
    )
    outcome = _jobs(cluster, io.StringIO(), tail_lines=20).run(_manifest(), timeout=60)
    assert (outcome.status, outcome.exit_code) == ("Failed", 1)
    assert outcome.reason == "PyTorchJobFailed" and "Master replica(s) failed" in outcome.message
    assert outcome.log_tail == log[-20:]
    assert cluster.count("DELETE") == 0  # a failed job stays for inspection (its ttl cleans it up)


def test_client_deadline_deletes_the_job(cluster: LoopbackCluster) -> None:
    cluster.next_script = Script(outcome="Hang", master_log=["waiting for rendezvous"])
    m = _manifest()
    outcome = _jobs(cluster, io.StringIO()).run(m, timeout=0.5)
    assert (outcome.status, outcome.exit_code, outcome.deleted) == ("DeadlineExceeded", 1, True)
    assert "0.5 s" in outcome.message
    assert cluster.count("DELETE", m["metadata"]["name"]) == 1
    assert cluster.job("pytorchjobs", "default", m["metadata"]["name"]) is None
    assert cluster.pods == {}  # the pods went with it
    assert outcome.log_tail == ["waiting for rendezvous"]


def test_operator_deadline_deletes_the_job(cluster: LoopbackCluster) -> None:
    cluster.next_script = Script(
        outcome="Failed",
        reason="DeadlineExceeded",
        message="PyTorchJob default/x has failed because it has reached the deadline",
    )
    m = _manifest(active_deadline_seconds=60)
    outcome = _jobs(cluster, io.StringIO()).run(m)
    assert (outcome.status, outcome.exit_code, outcome.deleted) == ("DeadlineExceeded", 1, True)
    assert cluster.job("pytorchjobs", "default", m["metadata"]["name"]) is None


@pytest.mark.parametrize(
    "status,needle",
    [(403, "403 Forbidden"), (422, "422"), (404, "is the Kubeflow training operator installed")],
)
def test_api_refusal_is_a_clear_failure(cluster: LoopbackCluster, status: int, needle: str) -> None:
    cluster.fail("create", status, message='pytorchjobs.kubeflow.org is forbidden: User "ci" cannot create')
    with pytest.raises(LaunchError, match=needle) as info:
        _jobs(cluster, io.StringIO()).run(_manifest())
    assert cluster.count("POST") == 1  # not retried: retrying cannot help
    if status == 403:
        assert 'User "ci" cannot create' in str(info.value)


def test_server_errors_are_retried_then_reported(cluster: LoopbackCluster) -> None:
    cluster.fail("create", 500, times=10, message="etcdserver: request timed out")
    with pytest.raises(LaunchError, match="500 Internal Server Error: etcdserver: request timed out"):
        _jobs(cluster, io.StringIO(), max_api_failures=3).run(_manifest())
    assert cluster.count("POST") == 3 and cluster.jobs == {}


def test_a_transient_error_does_not_fail_the_launch(cluster: LoopbackCluster) -> None:
    cluster.fail("create", 503)
    cluster.fail("get", 429, times=2)
    outcome = _jobs(cluster, io.StringIO()).run(_manifest())
    assert outcome.exit_code == 0 and cluster.count("POST") == 2 and len(cluster.jobs) == 1


def test_schema_refusal_by_the_api_server(cluster: LoopbackCluster) -> None:
    m = _manifest()
    m["spec"]["runPolicy"]["backoffLimit"] = "3"  # what a hand-edited manifest might hold
    with pytest.raises(LaunchError, match="422 .*is invalid.*backoffLimit"):
        _jobs(cluster, io.StringIO()).run(m)


def test_admission_problems_are_refused_before_submitting(cluster: LoopbackCluster) -> None:
    m = _manifest()
    m["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    with pytest.raises(LaunchError, match="would be refused: .*Master.replicas must be 1"):
        _jobs(cluster, io.StringIO()).run(m)
    assert cluster.count("POST") == 0


def test_retry_reattaches_instead_of_creating_a_duplicate(cluster: LoopbackCluster) -> None:
    """First attempt: the job is created, then the API stops answering and the launcher gives up
    (exit 1, the job keeps running). The orchestrator retries the same launch: it must watch that job."""
    m = _manifest()
    cluster.next_script = Script(running_at=2, end_at=12, master_log=["training", "done"])
    cluster.fail("get", 503, times=5)
    with pytest.raises(LaunchError, match="503"):
        _jobs(cluster, io.StringIO(), max_api_failures=3, stream_logs=False).run(m)
    assert cluster.count("POST") == 1 and len(cluster.jobs) == 1

    out = io.StringIO()
    retry = _jobs(cluster, out).run(
        build_manifest(
            LaunchSpec(
                recipe="tweets-bow",
                data="/data/t",
                out="/data/runs/a",
                nodes=2,
                gpus_per_node=1,
                image="reg/ampflow:0.1",
                api="pytorchjob",
            )
        )
    )  # rebuilt from the same inputs, as a retry would
    assert (retry.status, retry.reattached) == ("Succeeded", True)
    assert cluster.count("POST") == 2 and len(cluster.jobs) == 1  # the second create met 409
    assert cluster.count("DELETE") == 0
    assert "reattaching" in out.getvalue()


def test_same_name_different_spec_is_refused_untouched(cluster: LoopbackCluster) -> None:
    cluster.put(_manifest(name="nightly"), Script(outcome="Hang"))
    with pytest.raises(LaunchError, match="already exists with a different spec"):
        _jobs(cluster, io.StringIO()).run(_manifest(name="nightly", precision="bf16-mixed"))
    assert cluster.count("DELETE") == 0 and cluster.job("pytorchjobs", "default", "nightly") is not None


def test_reattach_to_a_finished_job_reports_its_outcome(cluster: LoopbackCluster) -> None:
    m = _manifest(api="trainjob")
    cluster.put(
        m,
        Script(
            outcome="Failed",
            running_at=1,
            end_at=1,
            reason="TrainingFailed",
            message="boom",
            master_log=["Traceback", "ValueError: boom"],
        ),
    )
    outcome = _jobs(cluster, io.StringIO()).run(m)
    assert (outcome.status, outcome.reattached, outcome.reason) == ("Failed", True, "TrainingFailed")
    assert outcome.log_tail == ["Traceback", "ValueError: boom"]


def test_job_state_reads_terminal_conditions() -> None:
    def obj(*conds: tuple[str, str]) -> dict[str, Any]:
        return {"status": {"conditions": [{"type": t, "status": s, "reason": t + "R"} for t, s in conds]}}

    assert job_state(obj(("Created", "True"), ("Running", "True")))[0] is None
    assert job_state(obj(("Running", "False"), ("Succeeded", "True")))[:2] == ("Succeeded", "SucceededR")
    assert job_state(obj(("Complete", "True")))[0] == "Succeeded"
    assert job_state(obj(("Succeeded", "False"), ("Failed", "True")))[0] == "Failed"
    assert job_state(obj(("Failed", "False")))[0] is None
    assert job_state({})[0] is None


# -- the CLI, through a kubeconfig ------------------------------------------------------------------


@pytest.fixture
def kubeconfig(cluster: LoopbackCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "loopback",
                "clusters": [{"name": "loopback", "cluster": {"server": cluster.host}}],
                "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "tester"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


CLI = [
    "launch",
    "--recipe",
    "tweets-bow",
    "--data",
    "/data/t",
    "--nodes",
    "2",
    "--gpus-per-node",
    "8",
    "--image",
    "reg/ampflow:0.1",
    "--poll-interval",
    str(POLL),
]


def test_cli_success(cluster: LoopbackCluster, kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.next_script = Script(master_log=["hello from rank 0"])
    assert main([*CLI, "--api", "trainjob", "--name", "Nightly"]) == 0
    out = capsys.readouterr().out
    assert "hello from rank 0" in out and "TrainJob default/nightly succeeded" in out
    assert cluster.job("trainjobs", "default", "nightly") is not None


def test_cli_failure_exit_1(
    cluster: LoopbackCluster, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.next_script = Script(
        outcome="Failed",
        reason="PyTorchJobFailed",
        message="1 Master replica(s) failed",
        master_log=["loading data", "FileNotFoundError: /data/t/manifest.json"],
    )
    assert main([*CLI, "--api", "pytorchjob"]) == 1
    err = capsys.readouterr().err
    assert "failed: PyTorchJob default/" in err and "PyTorchJobFailed: 1 Master replica(s) failed" in err
    assert "FileNotFoundError: /data/t/manifest.json\ninspect: kubectl -n default describe pytorchjob " in err


def test_cli_api_error_exit_1(
    cluster: LoopbackCluster, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.fail("create", 403, message='User "ci" cannot create resource "pytorchjobs"')
    assert main(CLI) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "403 Forbidden" in err and "Traceback" not in err


def test_cli_default_api_is_trainjob(cluster: LoopbackCluster, kubeconfig: Path) -> None:
    """Kubeflow Trainer v2 first: without --api the launch creates a TrainJob."""
    assert main([*CLI, "--no-logs"]) == 0
    assert cluster.count("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/default/trainjobs") == 1


def test_cli_timeout_deletes(
    cluster: LoopbackCluster, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.next_script = Script(outcome="Hang")
    assert main([*CLI, "--timeout", "0.3", "--no-logs"]) == 1
    err = capsys.readouterr().err
    assert "DeadlineExceeded: RunDeadline" in err and "(--run-deadline)" in err
    assert cluster.count("DELETE") == 1 and cluster.jobs == {}


def test_cli_without_any_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(CLI) == 1
    err = capsys.readouterr().err
    assert "no Kubernetes credentials" in err and "Traceback" not in err


# -- queues and deadlines: the clock advances by the client's own polls ------------------------------


class PollClock:
    """A clock that moves only when the client sleeps between polls: one poll interval per sleep."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _clocked(cluster: LoopbackCluster, clock: PollClock) -> JobClient:
    return JobClient(
        _api(cluster), poll_interval=1.0, out=io.StringIO(), stream_logs=False, clock=clock, sleep=clock.sleep
    )


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_queue_timeout_fires_for_a_job_kueue_holds(cluster: LoopbackCluster, api: str) -> None:
    """The loopback's Kueue never admits the job: it stays suspended with no pods. The queue timeout
    (5 s) fires and says so; the shorter run deadline (2 s) does not, since the job never ran."""
    cluster.next_script = Script(outcome="Hang", admit_at=10**6)
    m = _manifest(api, queue="team-a")
    clock = PollClock()
    outcome = _clocked(cluster, clock).run(m, queue_timeout=5, run_deadline=2)
    assert (outcome.status, outcome.reason, outcome.deadline) == ("DeadlineExceeded", "QueueTimeout", "queue")
    assert "did not start within 5 s (--queue-timeout): waited 5 s" in outcome.message
    assert "suspended, not admitted by Kueue (queue team-a)" in outcome.message
    assert (outcome.queued_s, outcome.ran_s) == (5.0, 0.0)
    assert outcome.deleted and cluster.jobs == {} and cluster.pods == {}


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_run_deadline_counts_from_the_start_not_from_submission(cluster: LoopbackCluster, api: str) -> None:
    """Pods unschedulable for 29 polls (longer than the 10 s run deadline), then 4 polls of running:
    the job succeeds. The same job hanging once it runs is stopped 10 s after its start, reported as
    the run deadline with both times."""
    cluster.next_script = Script(unschedulable="0/4 nodes are available", running_at=30, end_at=34)
    ok = _clocked(cluster, PollClock()).run(_manifest(api), run_deadline=10)
    assert (ok.status, ok.deadline, ok.queued_s, ok.ran_s) == ("Succeeded", None, 29.0, 4.0)

    cluster.next_script = Script(outcome="Hang", unschedulable="0/4 nodes are available", running_at=30)
    hung = _clocked(cluster, PollClock()).run(_manifest(api, name="hangs"), run_deadline=10, queue_timeout=60)
    assert (hung.reason, hung.deadline, hung.queued_s, hung.ran_s) == ("RunDeadline", "run", 29.0, 10.0)
    assert "ran 10 s after waiting 29 s to start" in hung.message and hung.deleted


def test_a_queued_job_runs_once_kueue_admits_it(cluster: LoopbackCluster) -> None:
    """The real TrainJob CRD schema admits the queue label and the WorkloadPriorityClass label; the
    loopback's Kueue suspends the job on create and unsuspends it at its 4th poll, and it runs."""
    cluster.next_script = Script(admit_at=4, running_at=5, end_at=7)
    m = _manifest("trainjob", queue="team-a", workload_priority="high")
    outcome = _clocked(cluster, PollClock()).run(m, queue_timeout=30)
    assert (outcome.status, outcome.queued_s) == ("Succeeded", 4.0)


# -- logs that survive a dropped connection -----------------------------------------------------------


def test_log_follow_resumes_by_time_after_a_dropped_connection(cluster: LoopbackCluster) -> None:
    """The first follow breaks after 3 lines, halfway through the 4th. The client reopens it with
    sinceTime = the 3rd line's time; the server (like the kubelet) answers from that whole second, so
    every line comes again, one of them with the same timestamp as the last one printed. Each line is
    printed exactly once, in order, the broken half line never."""
    times = [
        "2026-01-01T00:00:00.1Z",
        "2026-01-01T00:00:00.2Z",
        "2026-01-01T00:00:00.25Z",
        "2026-01-01T00:00:00.25Z",
        "2026-01-01T00:00:00.300000001Z",
        "2026-01-01T00:00:01Z",
    ]
    log = [f"line {i}" for i in range(6)]
    cluster.next_script = Script(master_log=log, log_times=times, drop_log_after=3, end_at=12)
    out = io.StringIO()
    outcome = _jobs(cluster, out).run(_manifest("trainjob"), run_deadline=60)
    assert outcome.exit_code == 0 and cluster.dropped_logs == 1
    streamed = [line.split("] ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("[")]
    assert streamed == log
    assert cluster.count("GET", "sinceTime=2026-01-01T00%3A00%3A00.25Z") >= 1


# -- server-side dry run -------------------------------------------------------------------------------


def test_cli_dry_run_asks_the_api_server(
    cluster: LoopbackCluster, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a reachable cluster, --dry-run creates with dryRun=All (Kubernetes API conventions): the
    server validates against the real CRD schema and keeps nothing."""
    assert main([*CLI, "--queue", "team-a", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "accepts TrainJob default/" in captured.err and "nothing was created" in captured.err
    assert cluster.count("POST", "dryRun=All") == 1 and cluster.count("POST") == 1 and cluster.jobs == {}


def test_cli_dry_run_refused_by_the_server_exits_2(
    cluster: LoopbackCluster, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admission refusal (here a ResourceQuota's, as the API server words it) is bad input: exit 2."""
    quota = (
        'trainjobs.trainer.kubeflow.org "x" is forbidden: exceeded quota: gpus, requested: nvidia.com/gpu=16'
    )
    cluster.fail("create", 403, message=quota)
    assert main([*CLI, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert (
        "the API server refused the job (dry run): 403 Forbidden: " + quota in err and "Traceback" not in err
    )
    assert cluster.jobs == {}


def test_cli_dry_run_without_a_cluster_checks_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main([*CLI, "--dry-run"]) == 0
    assert "dry run checked locally only; no cluster to ask" in capsys.readouterr().err
