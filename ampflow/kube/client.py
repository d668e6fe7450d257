"""Submit a TrainJob or PyTorchJob, reattach on retry, watch it to its end, stream the master's log.

    from ampflow.kube.client import JobClient, api_client_from_config
    outcome = JobClient(api_client_from_config()).run(manifest, queue_timeout=21600, run_deadline=3600)
    sys.exit(outcome.exit_code)

Truthful outcomes (the old KFP launcher reported a Failed job as success and had no deadline):
- ``Succeeded`` (v1) / ``Complete`` (v2) -> exit 0;
- ``Failed`` -> exit 1 with the operator's reason and message and the tail of the master's log;
- a deadline deletes the job -> exit 1. Two clocks (:class:`Deadlines`): the queue timeout counts the
  time before the job runs (suspended by Kueue, pods unschedulable or pulling their image), the run
  deadline the time since it started running, so a job that waited its turn in a queue is never
  killed for the wait; the operator's ``activeDeadlineSeconds`` is a third, server-side one;
- a create that meets an existing job (409) reattaches when the spec hash annotation matches, so an
  orchestrator's retry never starts a second copy; a different spec fails without touching it.

The master's log is followed with timestamps (``timestamps=true``); after a dropped connection (an API
server restart, a log rotation) it is reopened from the last printed line's time (``sinceTime``), and
lines at or before that time that were already printed are dropped, so nothing is printed twice or lost.

Needs the ``kubernetes`` package (the ``kube`` extra); torch-free and mlflow-free.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from ampflow.kube.manifests import V1_CONTAINER, V2_JOB, resource_of, stored_spec_hash, validate_admission

# HTTP statuses worth another try: throttling, API server restarts, a gateway in between
TRANSIENT = (429, 500, 502, 503, 504)
# after activeDeadlineSeconds the operator fails the job itself; the client waits this much longer
DEADLINE_GRACE_S = 300
# a job without any condition this long after the watch began has no operator acting on it
NO_STATUS_WARN_S = 120
TERMINAL = {"Succeeded": "Succeeded", "Complete": "Succeeded", "Failed": "Failed"}


class LaunchError(RuntimeError):
    """The launch could not be carried out (API refused, conflict, API unreachable): exit 1."""


@dataclass
class Outcome:
    name: str
    namespace: str
    kind: str
    status: str  # Succeeded | Failed | DeadlineExceeded
    reason: str = ""
    message: str = ""
    log_tail: list[str] = field(default_factory=list)
    reattached: bool = False
    deleted: bool = False
    deadline: str | None = None  # "queue" or "run" when one of the client's deadlines ended the job
    queued_s: float = 0.0  # seconds from submission (or reattaching) until the job ran, or until now
    ran_s: float = 0.0  # seconds the job ran while watched

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "Succeeded" else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "reattached": self.reattached,
            "deleted": self.deleted,
            "exit_code": self.exit_code,
            "log_tail": self.log_tail,
            "deadline": self.deadline,
            "queued_s": self.queued_s,
            "ran_s": self.ran_s,
        }


@dataclass
class Deadlines:
    """The two client-side clocks of a launch, in seconds of ``clock`` (any monotonic clock).

    ``queue_timeout`` bounds the wait before the job runs, ``run_deadline`` the time since it started
    running; None leaves one unbounded. Pure, so a poller elsewhere (an Airflow trigger) can apply it.
    """

    queue_timeout: float | None
    run_deadline: float | None
    submitted: float
    started: float | None = None

    def mark_started(self, now: float) -> bool:
        """Record the start (once); True the first time."""
        if self.started is not None:
            return False
        self.started = now
        return True

    def queued_s(self, now: float) -> float:
        return (self.started if self.started is not None else now) - self.submitted

    def ran_s(self, now: float) -> float:
        return 0.0 if self.started is None else now - self.started

    def expired(self, now: float) -> str | None:
        """``"queue"`` or ``"run"`` when that deadline has passed at ``now``, else None."""
        if self.started is None:
            if self.queue_timeout is not None and now - self.submitted >= self.queue_timeout:
                return "queue"
        elif self.run_deadline is not None and now - self.started >= self.run_deadline:
            return "run"
        return None


def is_suspended(obj: dict[str, Any]) -> bool:
    """Whether the job is suspended (Kueue's webhook suspends a queued job until it is admitted)."""
    spec = obj.get("spec") or {}
    return bool(spec.get("suspend") or (spec.get("runPolicy") or {}).get("suspend"))


def has_started(obj: dict[str, Any], master: dict[str, Any] | None) -> bool:
    """Whether the job runs: not suspended, and a ``Running`` condition (v1) or a master pod that left
    ``Pending`` (both APIs; a TrainJob has no Running condition)."""
    if is_suspended(obj):
        return False
    _, _, _, true_types = job_state(obj)
    if "Running" in true_types:
        return True
    phase = ((master or {}).get("status") or {}).get("phase")
    return phase in ("Running", "Succeeded", "Failed")


def waiting_reason(obj: dict[str, Any], master: dict[str, Any] | None) -> str:
    """Why a job has not started, in a few words (for the queue timeout's report)."""
    if is_suspended(obj):
        queue = ((obj.get("metadata") or {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        return f"suspended, not admitted by Kueue (queue {queue})" if queue else "suspended"
    if master is None:
        return "no master pod yet"
    status = master.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"master pod unschedulable: {c.get('message') or c.get('reason', '')}".rstrip(": ")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"master pod waiting: {waiting['reason']}"
    return f"master pod {status.get('phase') or 'Pending'}"


def api_client_from_config(context: str | None = None) -> k8s.ApiClient:
    """A client from the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``), else the pod's service account."""
    from kubernetes import config

    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    configuration = k8s.Configuration()
    try:
        if os.path.exists(kubeconfig.split(os.pathsep)[0]):
            # explicit: the package reads KUBECONFIG once, at import, not when called
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise LaunchError(
            f"no Kubernetes credentials: no kubeconfig at {kubeconfig} and not in a pod ({exc})"
        ) from None
    return k8s.ApiClient(configuration)


def describe_api_error(exc: ApiException) -> str:
    """One line: status, reason and the API server's own message (the webhook's, for a refusal)."""
    message = ""
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message", "") if isinstance(body, dict) else ""
    except (ValueError, TypeError):
        message = (exc.body or "")[:300] if isinstance(exc.body, str) else ""
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


def job_state(obj: dict[str, Any]) -> tuple[str | None, str, str, list[str]]:
    """(terminal status or None, reason, message, the condition types that are True)."""
    conditions = [c for c in ((obj.get("status") or {}).get("conditions") or []) if c.get("status") == "True"]
    true_types = [c.get("type", "") for c in conditions]
    for wanted in ("Failed", "Succeeded", "Complete"):  # Failed first: a job cannot un-fail
        for c in conditions:
            if c.get("type") == wanted:
                return TERMINAL[wanted], c.get("reason", "") or "", c.get("message", "") or "", true_types
    return None, "", "", true_types


class JobClient:
    """Talks to one API server. ``poll_interval`` is the status-polling period (seconds)."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        poll_interval: float = 5.0,
        out: TextIO | None = None,
        stream_logs: bool = True,
        tail_lines: int = 50,
        max_api_failures: int = 5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_client = api_client
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.poll_interval = poll_interval
        self.out = out or sys.stdout
        self.stream_logs = stream_logs
        self.tail_lines = tail_lines
        self.max_api_failures = max_api_failures
        # the deadlines' clock and the polls' sleep (a test drives both to count time without waiting)
        self.clock = clock
        self.sleep = sleep
        self._print_lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._print_lock:
            print(line, file=self.out, flush=True)

    # -- objects ----------------------------------------------------------------------------------

    def _where(self, manifest: dict[str, Any]) -> tuple[str, str, str, str, str]:
        group, version, plural, kind = resource_of(manifest)
        meta = manifest["metadata"]
        return group, version, plural, meta.get("namespace") or "default", meta["name"]

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call; transient failures are retried ``max_api_failures`` times, others raise."""
        failures = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if exc.status not in TRANSIENT or failures + 1 >= self.max_api_failures:
                    raise
                detail = describe_api_error(exc)
            except Urllib3Error as exc:
                if failures + 1 >= self.max_api_failures:
                    host = self.api_client.configuration.host
                    raise LaunchError(f"{what}: cannot reach the Kubernetes API at {host}: {exc}") from None
                detail = str(exc)
            failures += 1
            self.say(f"{what}: {detail}; retrying ({failures}/{self.max_api_failures - 1})")
            self.sleep(min(self.poll_interval * 2**failures, 30.0))

    def get(self, manifest: dict[str, Any]) -> dict[str, Any]:
        group, version, plural, ns, name = self._where(manifest)
        return self._call(
            f"get {plural} {ns}/{name}",
            self.custom.get_namespaced_custom_object,
            group,
            version,
            ns,
            plural,
            name,
        )

    def delete(self, manifest: dict[str, Any]) -> None:
        group, version, plural, ns, name = self._where(manifest)
        try:
            self._call(
                f"delete {plural} {ns}/{name}",
                self.custom.delete_namespaced_custom_object,
                group,
                version,
                ns,
                plural,
                name,
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise LaunchError(
                    f"could not delete {plural} {ns}/{name}: {describe_api_error(exc)}"
                ) from None

    def submit(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the job, or reattach to the same job already there. Returns (object, reattached)."""
        group, version, plural, ns, name = self._where(manifest)
        what = f"{manifest['kind']} {ns}/{name}"
        problems = validate_admission(manifest)
        if problems:  # say it here, in full, rather than as the webhook's first complaint
            raise LaunchError(f"{what} would be refused: {'; '.join(problems)}")
        try:
            obj = self._call(
                f"create {what}",
                self.custom.create_namespaced_custom_object,
                group,
                version,
                ns,
                plural,
                manifest,
            )
            self.say(f"created {what}")
            return obj, False
        except ApiException as exc:
            if exc.status == 409:
                return self._reattach(manifest, what), True
            if exc.status == 404:
                raise LaunchError(
                    f"create {what}: the API server does not serve {group}/{version} {plural} in namespace "
                    f"{ns} ({describe_api_error(exc)}); is the {'Kubeflow training operator' if group == 'kubeflow.org' else 'Kubeflow Trainer'} installed?"
                ) from None
            raise LaunchError(f"create {what}: {describe_api_error(exc)}") from None

    def dry_run(self, manifest: dict[str, Any]) -> dict[str, str]:
        """Ask the API server to create ``manifest`` with ``dryRun=All`` (nothing is persisted).

        Returns ``{"verdict", "message"}``; verdict ``accepted``, ``exists`` (a launch would reattach,
        or be refused for another spec), ``refused`` (the server's message: schema, admission webhook,
        quota, RBAC) or ``unreachable``.
        """
        group, version, plural, ns, name = self._where(manifest)
        what = f"{manifest['kind']} {ns}/{name}"
        host = self.api_client.configuration.host
        try:
            self._call(
                f"dry-run create {what}",
                self.custom.create_namespaced_custom_object,
                group,
                version,
                ns,
                plural,
                manifest,
                dry_run="All",
                _request_timeout=(5, 30),
            )
        except ApiException as exc:
            if exc.status == 409:
                return {
                    "verdict": "exists",
                    "message": f"{what} already exists at {host}: a launch with the same spec reattaches "
                    "to it, one with another spec is refused",
                }
            if exc.status in TRANSIENT:
                return {"verdict": "unreachable", "message": f"the API server at {host} answered "
                        f"{describe_api_error(exc)}"}  # fmt: skip
            return {"verdict": "refused", "message": describe_api_error(exc)}
        except LaunchError as exc:
            return {"verdict": "unreachable", "message": str(exc)}
        return {
            "verdict": "accepted",
            "message": f"the API server at {host} accepts {what} (dryRun=All: schema, admission webhooks "
            "and quotas checked; nothing was created)",
        }

    def _reattach(self, manifest: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            existing = self.get(manifest)
        except ApiException as exc:
            raise LaunchError(f"{what} exists but cannot be read: {describe_api_error(exc)}") from None
        ours, theirs = stored_spec_hash(manifest), stored_spec_hash(existing)
        if theirs != ours:
            raise LaunchError(
                f"{what} already exists with a different spec (spec hash {theirs or 'absent'}, this launch "
                f"{ours}); choose another --name, or delete it first: kubectl delete "
                f"{manifest['kind'].lower()} -n {manifest['metadata'].get('namespace', 'default')} "
                f"{manifest['metadata']['name']}"
            )
        if (existing.get("metadata") or {}).get("deletionTimestamp"):
            raise LaunchError(f"{what} is being deleted; launch again once it is gone")
        self.say(f"{what} already exists with the same spec (hash {ours}): reattaching")
        return existing

    # -- pods and logs ----------------------------------------------------------------------------

    def master_pod(self, manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """(the master pod as a dict, its trainer container name); the newest if it was recreated."""
        _, _, _, ns, name = self._where(manifest)
        if manifest["kind"] == "PyTorchJob":
            selector, container = f"training.kubeflow.org/job-name={name}", V1_CONTAINER

            def is_master(labels: dict[str, str], annotations: dict[str, str]) -> bool:
                return (
                    labels.get("training.kubeflow.org/replica-type", "").lower() == "master"
                    and labels.get("training.kubeflow.org/replica-index", "0") == "0"
                )
        else:
            selector, container = f"jobset.sigs.k8s.io/jobset-name={name}", V2_JOB

            def is_master(labels: dict[str, str], annotations: dict[str, str]) -> bool:
                index = labels.get(
                    "batch.kubernetes.io/job-completion-index",
                    annotations.get("batch.kubernetes.io/job-completion-index"),
                )
                return (
                    labels.get("jobset.sigs.k8s.io/replicatedjob-name") == V2_JOB
                    and labels.get("jobset.sigs.k8s.io/job-index") == "0"
                    and index == "0"
                )

        pods = self._call(
            f"list pods {ns}",
            self.core.list_namespaced_pod,
            ns,
            label_selector=selector,
            _preload_content=False,
        )
        items = json.loads(pods.data or b"{}").get("items") or []
        masters = [
            p
            for p in items
            if is_master(
                (p.get("metadata") or {}).get("labels") or {},
                (p.get("metadata") or {}).get("annotations") or {},
            )
        ]
        masters.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
        return (masters[-1] if masters else None), container

    def log_tail(self, manifest: dict[str, Any]) -> list[str]:
        try:
            pod, container = self.master_pod(manifest)
            if pod is None:
                return []
            # raw bytes: the client would otherwise json-parse a log that happens to look like JSON
            resp = self._call(
                "read master log",
                self.core.read_namespaced_pod_log,
                pod["metadata"]["name"],
                pod["metadata"]["namespace"],
                container=container,
                tail_lines=self.tail_lines,
                _preload_content=False,
            )
        except (ApiException, LaunchError):
            return []
        return resp.data.decode("utf-8", "replace").splitlines()[-self.tail_lines :]

    # -- watching ---------------------------------------------------------------------------------

    def run(
        self,
        manifest: dict[str, Any],
        *,
        queue_timeout: float | None = None,
        run_deadline: float | None = None,
        timeout: float | None = None,
    ) -> Outcome:
        """Submit (or reattach) and watch until the job ends or a deadline passes (see :meth:`watch`)."""
        _, reattached = self.submit(manifest)
        return self.watch(
            manifest,
            queue_timeout=queue_timeout,
            run_deadline=run_deadline if run_deadline is not None else timeout,
            reattached=reattached,
        )

    def watch(
        self,
        manifest: dict[str, Any],
        *,
        queue_timeout: float | None = None,
        run_deadline: float | None = None,
        reattached: bool = False,
    ) -> Outcome:
        """Poll the job to its end. ``queue_timeout`` (seconds before it runs; None: no limit) and
        ``run_deadline`` (seconds since it started running; None: the job's ``activeDeadlineSeconds``
        plus :data:`DEADLINE_GRACE_S`, or no limit) delete it when they pass. A reattached watch counts
        both from the moment it reattached."""
        _, _, plural, ns, name = self._where(manifest)
        kind = manifest["kind"]
        if run_deadline is None:
            active = (manifest["spec"].get("runPolicy") or {}).get("activeDeadlineSeconds") or manifest[
                "spec"
            ].get("activeDeadlineSeconds")
            run_deadline = active + DEADLINE_GRACE_S if active else None
        clocks = Deadlines(queue_timeout, run_deadline, submitted=self.clock())
        follower = _LogFollower(self, manifest) if self.stream_logs else None
        if follower:
            follower.start()
        seen: list[str] = []
        warned = False
        master: dict[str, Any] | None = None
        try:
            while True:
                try:
                    obj = self.get(manifest)
                except ApiException as exc:
                    if exc.status == 404:
                        raise LaunchError(
                            f"{kind} {ns}/{name} disappeared while being watched (deleted?)"
                        ) from None
                    raise LaunchError(f"watch {kind} {ns}/{name}: {describe_api_error(exc)}") from None
                status, reason, message, true_types = job_state(obj)
                for t in true_types:
                    if t not in seen:
                        seen.append(t)
                        self.say(f"{kind} {ns}/{name}: {t}")
                now = self.clock()
                if clocks.started is None and status is None:
                    # until it runs, look at the master pod too: a TrainJob has no Running condition
                    if not is_suspended(obj) and "Running" not in true_types:
                        master = self._master_or_none(manifest)
                    if has_started(obj, master):
                        clocks.mark_started(now)
                        self.say(
                            f"{kind} {ns}/{name}: Running ({clocks.queued_s(now):.0f} s after "
                            f"{'reattaching' if reattached else 'submission'})"
                        )
                if status is not None:
                    break
                if not true_types and not warned and now - clocks.submitted > NO_STATUS_WARN_S:
                    warned = True
                    self.say(
                        f"{kind} {ns}/{name}: no status from the operator after {NO_STATUS_WARN_S} s; "
                        "is the operator running and watching this namespace?"
                    )
                which = clocks.expired(now)
                if which is not None:
                    return self._expire(manifest, follower, clocks, which, now, obj, master, reattached)
                self.sleep(self.poll_interval)
        except BaseException:
            if follower:
                follower.stop(wait=0)
            raise
        tail = self._stop_and_tail(follower, manifest)
        now = self.clock()
        times = {"queued_s": clocks.queued_s(now), "ran_s": clocks.ran_s(now)}
        if status == "Succeeded":
            return Outcome(name, ns, kind, "Succeeded", reason, message, tail, reattached, **times)
        if "deadline" in reason.lower() or "deadline" in message.lower():
            # the operator stopped it at activeDeadlineSeconds: remove it like a client-side deadline
            self.delete(manifest)
            return Outcome(
                name, ns, kind, "DeadlineExceeded", reason, message, tail, reattached, deleted=True, **times
            )
        return Outcome(name, ns, kind, "Failed", reason, message, tail, reattached, **times)

    def _master_or_none(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self.master_pod(manifest)[0]
        except (ApiException, LaunchError):
            return None  # a pod list that fails only delays noticing the start

    def _expire(
        self,
        manifest: dict[str, Any],
        follower: _LogFollower | None,
        clocks: Deadlines,
        which: str,
        now: float,
        obj: dict[str, Any],
        master: dict[str, Any] | None,
        reattached: bool,
    ) -> Outcome:
        """Delete the job whose ``which`` deadline passed and say which one, and how long it waited and ran."""
        _, _, _, ns, name = self._where(manifest)
        kind = manifest["kind"]
        queued, ran = clocks.queued_s(now), clocks.ran_s(now)
        # the master may still run: its log stream would not end by itself
        tail = self._stop_and_tail(follower, manifest, wait=0)
        self.delete(manifest)
        if which == "queue":
            reason = "QueueTimeout"
            message = (
                f"did not start within {clocks.queue_timeout:g} s (--queue-timeout): waited {queued:.0f} s, "
                f"{waiting_reason(obj, master)}; the job was deleted"
            )
        else:
            reason = "RunDeadline"
            message = (
                f"no result {clocks.run_deadline:g} s after it started running (--run-deadline): ran "
                f"{ran:.0f} s after waiting {queued:.0f} s to start; the job was deleted"
            )
        self.say(f"{kind} {ns}/{name}: {reason}: {message}")
        return Outcome(
            name,
            ns,
            kind,
            "DeadlineExceeded",
            reason,
            message,
            tail,
            reattached,
            deleted=True,
            deadline=which,
            queued_s=queued,
            ran_s=ran,
        )

    def _stop_and_tail(
        self, follower: _LogFollower | None, manifest: dict[str, Any], wait: float = 10.0
    ) -> list[str]:
        if follower:
            follower.stop(wait=wait and max(wait, 2 * self.poll_interval))
        tail = self.log_tail(manifest)
        if not tail and follower:  # pod gone (cleanPodPolicy All): what we streamed is all there is
            tail = list(follower.buffer)
        return tail


def parse_log_time(text: str) -> int | None:
    """Nanoseconds since the epoch of a kubelet log timestamp (RFC 3339, UTC, up to 9 fraction digits,
    trailing zeros trimmed as Go's RFC3339Nano does), or None when ``text`` is not one."""
    if not text.endswith("Z") or len(text) < 20:
        return None
    whole, _, frac = text[:-1].partition(".")
    if not frac.isdigit() and frac:
        return None
    try:
        seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return int(seconds) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


@dataclass
class _Resume:
    """Where a container's log was left: the last printed line's timestamp (its text, for sinceTime,
    and in ns) and how many printed lines carry exactly that timestamp."""

    text: str = ""
    ns: int = -1
    ties: int = 0


class _LogFollower(threading.Thread):
    """Follows the master pod's log while the job runs; a restarted container is followed again.

    The stream carries timestamps; a dropped stream is reopened with ``sinceTime`` = the last printed
    line's timestamp. The kubelet answers from that second on (it truncates sinceTime to whole seconds),
    so lines older than the last printed one are dropped, and of the lines with exactly its timestamp as
    many as were printed: nothing twice, nothing lost, however the log was rotated in between.
    """

    def __init__(self, jobs: JobClient, manifest: dict[str, Any]) -> None:
        super().__init__(daemon=True, name="ampflow-log-follower")
        self.jobs = jobs
        self.manifest = manifest
        self.buffer: collections.deque[str] = collections.deque(maxlen=jobs.tail_lines)
        self._halt = threading.Event()
        self._resume: dict[tuple[str, int], _Resume] = {}
        self._finished: set[tuple[str, int]] = set()
        self._said: set[str] = set()
        self._resp: Any = None
        # its own connection pool: a blocked follow must not hold one the status polls need
        self._core = k8s.CoreV1Api(k8s.ApiClient(jobs.api_client.configuration))

    def stop(self, wait: float) -> None:
        self._halt.set()
        if wait:
            self.join(wait)
        resp = self._resp
        if resp is not None and self.is_alive():
            try:
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()
            except Exception:  # noqa: BLE001 - closing a stream another thread reads may fail; harmless
                pass
        self.join(1.0)

    def run(self) -> None:
        try:
            while True:
                final = self._halt.is_set()
                try:
                    self._follow_once(final)
                except Exception:  # noqa: BLE001 - a log hiccup must never end the watch
                    pass
                if final:
                    return
                self._halt.wait(self.jobs.poll_interval)
        finally:
            self._core.api_client.close()

    def _open(self, pod: str, namespace: str, container: str, since: str) -> Any:
        """The follow stream, with timestamps, from ``since`` (RFC 3339) when given.

        Through ``call_api`` because the generated ``read_namespaced_pod_log`` (kubernetes 30) has
        ``since_seconds`` but no ``since_time``; the path and parameters are the API's own.
        """
        query: list[tuple[str, str]] = [("container", container), ("follow", "true"), ("timestamps", "true")]
        if since:
            query.append(("sinceTime", since))
        return self._core.api_client.call_api(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            "GET",
            {"name": pod, "namespace": namespace},
            query,
            {"Accept": "*/*"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=(10, 300),
        )

    def _follow_once(self, final: bool) -> None:
        pod, container = self.jobs.master_pod(self.manifest)
        if pod is None:
            return
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") == "Pending":
            self._report_pending(meta.get("name", ""), status)
        # the last round after the job ended only drains a finished container (it cannot block)
        wanted = ("Succeeded", "Failed") if final else ("Running", "Succeeded", "Failed")
        if status.get("phase") not in wanted:
            return
        statuses = [c for c in status.get("containerStatuses") or [] if c.get("name") == container]
        restarts = statuses[0].get("restartCount", 0) if statuses else 0
        key = (meta.get("uid") or meta.get("name", ""), restarts)
        if key in self._finished:
            return
        at = self._resume.setdefault(key, _Resume())
        resp = self._open(meta["name"], meta["namespace"], container, at.text)
        self._resp = resp
        skip_ties = at.ties  # lines carrying the last printed timestamp that this stream sends again
        pending = b""
        try:
            for chunk in resp.stream(4096, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    skip_ties = self._emit(meta["name"], at, raw, skip_ties)
            # a clean end: the last line may lack its newline. A dropped connection raised above, and
            # its unfinished line is sent again in full by the next stream.
            if pending:
                self._emit(meta["name"], at, pending, skip_ties)
        finally:
            self._resp = None
            resp.release_conn()
        # the stream ended because the container stopped, or the server closed it: then the next
        # round reopens it from the last timestamp
        if status.get("phase") in ("Succeeded", "Failed") or self._container_done(container):
            self._finished.add(key)

    def _emit(self, pod: str, at: _Resume, raw: bytes, skip_ties: int) -> int:
        """Print one ``<timestamp> <line>`` unless an earlier stream printed it; returns skip_ties left."""
        text = raw.decode("utf-8", "replace")
        stamp, sep, line = text.partition(" ")
        ns = parse_log_time(stamp)
        if ns is None:  # no timestamp (not a kubelet stream): print as it comes
            line = text
        elif ns < at.ns:
            return skip_ties
        elif ns == at.ns:
            if skip_ties > 0:
                return skip_ties - 1
            at.ties += 1
        else:
            at.text, at.ns, at.ties = stamp, ns, 1
        self.buffer.append(line)
        self.jobs.say(f"[{pod}] {line}")
        return skip_ties

    def _report_pending(self, pod: str, status: dict[str, Any]) -> None:
        """Say once why the master waits (no GPU free, image pull failing), instead of silence."""
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message"):
                self._say_once(f"[{pod}] not scheduled: {c['message']}")
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                self._say_once(
                    f"[{pod}] waiting: {waiting.get('reason')}: {waiting.get('message', '')}".rstrip(": ")
                )

    def _say_once(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.jobs.say(line)

    def _container_done(self, container: str) -> bool:
        fresh, _ = self.jobs.master_pod(self.manifest)
        if fresh is None:
            return True
        for c in (fresh.get("status") or {}).get("containerStatuses") or []:
            if c.get("name") == container:
                return "terminated" in (c.get("state") or {})
        return False
