"""A loopback stand-in for a Kubernetes API server with the Kubeflow operators, for client tests.

No API server can run on this machine (no docker engine, no kube-apiserver binary), so this answers, on 127.0.0.1, the HTTP
paths the real kubernetes client calls for ``ampflow.kube.client``, with the API server's own status
codes and ``Status`` bodies:

    POST   /apis/{group}/{version}/namespaces/{ns}/{plural}[?dryRun=All]
                                                                      create (201; 409 AlreadyExists;
                                                                      422 Invalid against the real CRD schema;
                                                                      dryRun=All: the same checks, nothing kept)
    GET    /apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]  list / get (404 NotFound)
    DELETE /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}    delete (pods go with it)
    GET    /api/v1/namespaces/{ns}/pods?labelSelector=a=b,c=d         pod list (equality selectors)
    GET    /api/v1/namespaces/{ns}/pods/{pod}/log?container=&follow=&tailLines=&timestamps=&sinceTime=
                                                                      log; follow streams chunked
                                                                      until the container ends;
                                                                      timestamps prefixes each line
                                                                      with its RFC 3339 time; sinceTime
                                                                      (truncated to whole seconds, as
                                                                      the kubelet receives it) starts there

for kubeflow.org/v1 pytorchjobs and trainer.kubeflow.org/v1alpha1 trainjobs. A small "operator"
moves each job through its conditions as the client polls it (one step per GET, so a script is
deterministic and never depends on wall-clock time) and creates the pods a real operator would, with
the real operators' names and labels (v1: ``<job>-master-0`` labelled ``training.kubeflow.org/...``;
Trainer v2/JobSet: ``<job>-node-0-<i>-xxxxx`` labelled ``jobset.sigs.k8s.io/...``). A TrainJob gets
no ``Running`` condition (Trainer v2 has none; its pods say it runs), a PyTorchJob does.

Kueue, as its webhook and controller behave: a job created with the ``kueue.x-k8s.io/queue-name``
label is suspended on create (``spec.suspend`` / ``spec.runPolicy.suspend``), carries a ``Suspended``
condition and has no pods until it is admitted (``Script.admit_at``), then is unsuspended.

Script a job with :class:`Script`; inject API errors with :meth:`LoopbackCluster.fail`; read back
every request from :attr:`LoopbackCluster.requests`.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

CRD_DIR = Path(__file__).resolve().parent / "data" / "crds"
CRD_FILES = {
    ("kubeflow.org", "v1", "pytorchjobs"): "kubeflow.org_pytorchjobs.yaml",
    ("trainer.kubeflow.org", "v1alpha1", "trainjobs"): "trainer.kubeflow.org_trainjobs.yaml",
}
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS_REASON = {
    403: "Forbidden",
    404: "NotFound",
    409: "AlreadyExists",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@functools.cache
def crd_schema(group: str, version: str, plural: str) -> dict[str, Any]:
    text = (CRD_DIR / CRD_FILES[(group, version, plural)]).read_text(encoding="utf-8")
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@functools.cache
def _validator(group: str, version: str, plural: str) -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(crd_schema(group, version, plural))


@dataclass
class Script:
    """How the operator treats the next job created (or one put in place with ``LoopbackCluster.put``).

    ``outcome``: Succeeded | Failed | Hang. The job is Created on the first GET, Running from GET
    ``running_at`` (pods exist and run from then on), and ends at GET ``end_at``.
    """

    outcome: str = "Succeeded"
    running_at: int = 2
    end_at: int = 6
    reason: str = ""
    message: str = ""
    master_log: list[str] = field(default_factory=lambda: ["epoch 0 step 1 loss 1.10", "done"])
    log_delay_s: float = 0.0
    # pods exist but wait to be scheduled until running_at, with this PodScheduled message
    unschedulable: str = ""
    # Kueue admits a job that carries the queue label at this GET (before it: suspended, no pods)
    admit_at: int = 1
    # the master's log lines' times (RFC 3339, UTC); default: a microsecond apart from pod creation
    log_times: list[str] | None = None
    # the first follow of the master's log breaks its connection after this many lines (no final chunk)
    drop_log_after: int | None = None


@dataclass
class _Job:
    obj: dict[str, Any]
    script: Script
    gets: int = 0


class LoopbackCluster:
    """The server and its state. Use as a context manager; ``host`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.jobs: dict[tuple[str, str, str], _Job] = {}  # (plural, ns, name)
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, name)
        self.logs: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (time, line)
        self.dropped_logs = 0  # follow connections broken on purpose (Script.drop_log_after)
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.next_script = Script()
        self._faults: list[tuple[str, int, int, str]] = []  # (verb, status, remaining, message)
        self.stopped = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackCluster:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()

    # -- scripting --------------------------------------------------------------------------------

    def fail(self, verb: str, status: int, times: int = 1, message: str = "") -> None:
        """Answer the next ``times`` requests of ``verb`` (create, get, delete, list, pods, log) with ``status``."""
        with self.lock:
            self._faults.append((verb, status, times, message or f"scripted {status}"))

    def put(self, manifest: dict[str, Any], script: Script | None = None) -> None:
        """Place a job as if created earlier (by a previous attempt, or by someone else)."""
        group, version = manifest["apiVersion"].split("/")
        plural = manifest["kind"].lower() + "s"
        self._create(
            group,
            version,
            plural,
            manifest["metadata"].get("namespace", "default"),
            manifest,
            script or self.next_script,
        )

    def count(self, method: str, fragment: str = "") -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and fragment in p)

    def job(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            j = self.jobs.get((plural, ns, name))
            return None if j is None else j.obj

    def _take_fault(self, verb: str) -> tuple[int, str] | None:
        with self.lock:
            for i, (v, status, remaining, message) in enumerate(self._faults):
                if v == verb:
                    if remaining <= 1:
                        self._faults.pop(i)
                    else:
                        self._faults[i] = (v, status, remaining - 1, message)
                    return status, message
        return None

    # -- the API server ---------------------------------------------------------------------------

    def _validate(self, group: str, version: str, plural: str, body: dict[str, Any]) -> str | None:
        errors = sorted(_validator(group, version, plural).iter_errors(body), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            return f"{'.'.join(str(p) for p in e.path)}: {e.message}"
        name = (body.get("metadata") or {}).get("name", "")
        from ampflow.kube.names import is_dns1035

        if not is_dns1035(name):
            return f"metadata.name: Invalid value: {name!r}: a DNS-1035 label must consist of lower case ..."
        return None

    def _create(
        self, group: str, version: str, plural: str, ns: str, body: dict[str, Any], script: Script
    ) -> dict[str, Any]:
        obj = json.loads(json.dumps(body))
        meta = obj.setdefault("metadata", {})
        meta.update(
            namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1", generation=1, creationTimestamp=_now()
        )
        obj["status"] = {}
        if KUEUE_QUEUE in (meta.get("labels") or {}):
            _set_suspend(plural, obj, True)  # Kueue's mutating webhook
        with self.lock:
            self.jobs[(plural, ns, meta["name"])] = _Job(obj, script)
        return obj

    def _delete(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            job = self.jobs.pop((plural, ns, name), None)
            if job is None:
                return None
            for key in [k for k, p in self.pods.items() if p["metadata"]["annotations"].get("job") == name]:
                self.pods.pop(key)
                self.logs.pop(key, None)
            return job.obj

    def _reconcile(self, plural: str, job: _Job) -> None:
        """One operator step, run on every GET of the job."""
        job.gets += 1
        s, obj = job.script, job.obj
        conditions = [_cond("Created", "JobCreated", "job created")]
        queued = KUEUE_QUEUE in (obj["metadata"].get("labels") or {})
        if queued and job.gets < s.admit_at:
            queue = obj["metadata"]["labels"][KUEUE_QUEUE]
            conditions.append(_cond("Suspended", "Suspended", f"Kueue has not admitted it to {queue}"))
            obj["status"] = {"conditions": conditions}
            return
        if queued:
            _set_suspend(plural, obj, False)  # admitted: Kueue unsuspends the job
        if s.unschedulable and job.gets < s.running_at:
            self._ensure_pods(plural, job, "Pending")
        if job.gets >= s.running_at:
            self._ensure_pods(plural, job, "Running")
            if plural == "pytorchjobs":  # Trainer v2's TrainJob has no Running condition
                conditions.append(_cond("Running", "JobRunning", "job is running"))
        ended = s.outcome != "Hang" and job.gets >= s.end_at
        if ended:
            if conditions[-1]["type"] == "Running":
                conditions[-1]["status"] = "False"
            terminal = (
                s.outcome
                if s.outcome == "Failed"
                else ("Succeeded" if plural == "pytorchjobs" else "Complete")
            )
            conditions.append(
                _cond(terminal, s.reason or f"Job{s.outcome}", s.message or f"job {s.outcome.lower()}")
            )
            self._ensure_pods(plural, job, "Succeeded" if s.outcome == "Succeeded" else "Failed")
        obj["status"] = {"conditions": conditions}

    def _ensure_pods(self, plural: str, job: _Job, phase: str) -> None:
        meta = job.obj["metadata"]
        name, ns = meta["name"], meta["namespace"]
        if plural == "pytorchjobs":
            container = "pytorch"
            replicas = job.obj["spec"]["pytorchReplicaSpecs"]
            pods = [
                (
                    "master",
                    f"{name}-master-0",
                    {
                        "training.kubeflow.org/job-name": name,
                        "training.kubeflow.org/replica-type": "master",
                        "training.kubeflow.org/replica-index": "0",
                        "training.kubeflow.org/job-role": "master",
                    },
                    True,
                )
            ]
            for i in range((replicas.get("Worker") or {}).get("replicas", 0)):
                pods.append(
                    (
                        f"worker-{i}",
                        f"{name}-worker-{i}",
                        {
                            "training.kubeflow.org/job-name": name,
                            "training.kubeflow.org/replica-type": "worker",
                            "training.kubeflow.org/replica-index": str(i),
                        },
                        False,
                    )
                )
        else:
            container = "node"
            pods = [
                (
                    "master" if i == 0 else f"node-{i}",
                    f"{name}-node-0-{i}-{uuid.uuid4().hex[:5]}",
                    {
                        "jobset.sigs.k8s.io/jobset-name": name,
                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                        "jobset.sigs.k8s.io/job-index": "0",
                        "batch.kubernetes.io/job-completion-index": str(i),
                    },
                    i == 0,
                )
                for i in range(job.obj["spec"]["trainer"].get("numNodes", 1))
            ]
        with self.lock:
            existing = {
                p["metadata"]["annotations"]["role"]: key
                for key, p in self.pods.items()
                if p["metadata"]["annotations"].get("job") == name
            }
            for role, pod_name, labels, is_master in pods:
                key = existing.get(role)
                if key is None:
                    key = (ns, pod_name)
                    self.pods[key] = {
                        "metadata": {
                            "name": pod_name,
                            "namespace": ns,
                            "uid": str(uuid.uuid4()),
                            "labels": labels,
                            "annotations": {"job": name, "role": role},
                            "creationTimestamp": _now(),
                        },
                        "status": {},
                    }
                    lines = list(job.script.master_log) if is_master else ["worker up"]
                    times = job.script.log_times if is_master and job.script.log_times else None
                    self.logs[key] = list(zip(times or _times_from(len(lines)), lines, strict=True))
                if phase == "Pending":
                    self.pods[key]["status"] = {
                        "phase": "Pending",
                        "conditions": [
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": job.script.unschedulable,
                            }
                        ],
                    }
                    continue
                state = (
                    {"running": {}}
                    if phase == "Running"
                    else {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1}}
                )
                self.pods[key]["status"] = {
                    "phase": phase,
                    "containerStatuses": [{"name": container, "restartCount": 0, "state": state}],
                }

    def pod_done(self, key: tuple[str, str]) -> bool:
        with self.lock:
            pod = self.pods.get(key)
            return pod is None or pod["status"].get("phase") in ("Succeeded", "Failed")


KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"


def _set_suspend(plural: str, obj: dict[str, Any], value: bool) -> None:
    if plural == "pytorchjobs":
        obj["spec"].setdefault("runPolicy", {})["suspend"] = value
    else:
        obj["spec"]["suspend"] = value


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _times_from(n: int) -> list[str]:
    """``n`` kubelet timestamps a microsecond apart from now (RFC3339Nano, 9 fraction digits)."""
    base = datetime.now(UTC).timestamp()
    return [
        datetime.fromtimestamp(base + i * 1e-6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
        for i in range(n)
    ]


def _seconds(stamp: str) -> str:
    """A timestamp truncated to whole seconds: sinceTime as the API server passes it on to the kubelet."""
    return stamp[:19]


def _cond(kind: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _now(),
    }


def _status(code: int, message: str, name: str = "", kind: str = "") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _STATUS_REASON.get(code, "Unknown"),
        "details": {"name": name, "kind": kind},
        "code": code,
    }


def _handler(cluster: LoopbackCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in separate writes: without TCP_NODELAY each answer waits out the
        # client's delayed ACK (about 40 ms), which a test of many polls pays a hundred times
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        # -- plumbing -----------------------------------------------------------------------------

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code, _REASONS.get(code))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}") if n else {}

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            with cluster.lock:
                cluster.requests.append((method, self.path))
            parts = url.path.strip("/").split("/")
            body = self._body() if method in ("POST", "DELETE") else {}
            # /apis/{g}/{v}/namespaces/{ns}/{plural}[/{name}]
            if len(parts) in (6, 7) and parts[0] == "apis" and parts[3] == "namespaces":
                _, group, version, _, ns, plural, *rest = parts
                if (group, version, plural) not in CRD_FILES:
                    return self._send(
                        404, _status(404, f"the server could not find the requested resource ({plural})")
                    )
                return self._custom(
                    method, group, version, ns, plural, rest[0] if rest else None, body, query
                )
            # /api/v1/namespaces/{ns}/pods[/{name}/log]
            if (
                len(parts) >= 5
                and parts[:3] == ["api", "v1", "namespaces"]
                and parts[4] == "pods"
                and method == "GET"
            ):
                ns = parts[3]
                if len(parts) == 5:
                    return self._pods(ns, query)
                if len(parts) == 7 and parts[6] == "log":
                    return self._log(ns, parts[5], query)
            self._send(404, _status(404, f"no route {method} {url.path}"))

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

        # -- resources ----------------------------------------------------------------------------

        def _custom(
            self,
            method: str,
            group: str,
            version: str,
            ns: str,
            plural: str,
            name: str | None,
            body: dict[str, Any],
            query: dict[str, str],
        ) -> None:
            verb = {"POST": "create", "DELETE": "delete"}.get(method, "get" if name else "list")
            fault = cluster._take_fault(verb)
            if fault:
                return self._send(fault[0], _status(fault[0], fault[1], name or "", plural))
            kind = "PyTorchJob" if plural == "pytorchjobs" else "TrainJob"
            if verb == "create":
                job_name = (body.get("metadata") or {}).get("name", "")
                if (plural, ns, job_name) in cluster.jobs:
                    return self._send(
                        409, _status(409, f'{plural}.{group} "{job_name}" already exists', job_name, plural)
                    )
                problem = cluster._validate(group, version, plural, body)
                if problem:
                    return self._send(
                        422,
                        _status(422, f'{kind}.{group} "{job_name}" is invalid: {problem}', job_name, plural),
                    )
                if query.get("dryRun") == "All":  # every check of a create, nothing persisted
                    return self._send(201, json.loads(json.dumps(body)))
                return self._send(201, cluster._create(group, version, plural, ns, body, cluster.next_script))
            if verb == "list":
                with cluster.lock:
                    items = [j.obj for (p, n, _), j in cluster.jobs.items() if p == plural and n == ns]
                return self._send(
                    200,
                    {
                        "apiVersion": f"{group}/{version}",
                        "kind": f"{kind}List",
                        "metadata": {},
                        "items": items,
                    },
                )
            if verb == "delete":
                obj = cluster._delete(plural, ns, name or "")
                if obj is None:
                    return self._send(
                        404, _status(404, f'{plural}.{group} "{name}" not found', name or "", plural)
                    )
                return self._send(200, obj)
            with cluster.lock:
                job = cluster.jobs.get((plural, ns, name or ""))
                if job is None:
                    return self._send(
                        404, _status(404, f'{plural}.{group} "{name}" not found', name or "", plural)
                    )
                cluster._reconcile(plural, job)
                obj = json.loads(json.dumps(job.obj))
            self._send(200, obj)

        def _pods(self, ns: str, query: dict[str, str]) -> None:
            fault = cluster._take_fault("pods")
            if fault:
                return self._send(fault[0], _status(fault[0], fault[1]))
            wanted = dict(term.split("=", 1) for term in query.get("labelSelector", "").split(",") if term)
            with cluster.lock:
                items = [
                    json.loads(json.dumps(p))
                    for (n, _), p in cluster.pods.items()
                    if n == ns and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
                ]
            self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})

        def _log(self, ns: str, pod: str, query: dict[str, str]) -> None:
            fault = cluster._take_fault("log")
            if fault:
                return self._send(fault[0], _status(fault[0], fault[1], pod, "pods"))
            key = (ns, pod)
            with cluster.lock:
                lines = cluster.logs.get(key)
                script = next(
                    (
                        j.script
                        for j in cluster.jobs.values()
                        if j.obj["metadata"]["name"]
                        == cluster.pods.get(key, {}).get("metadata", {}).get("annotations", {}).get("job")
                    ),
                    None,
                )
                delay = script.log_delay_s if script is not None else 0.0
                drop_after = None
                if script is not None and script.drop_log_after is not None and cluster.dropped_logs == 0:
                    drop_after = script.drop_log_after
            if lines is None:
                return self._send(404, _status(404, f'pods "{pod}" not found', pod, "pods"))
            if "sinceTime" in query:
                since = _seconds(query["sinceTime"])
                lines = [(t, line) for t, line in lines if _seconds(t) >= since]
            stamped = query.get("timestamps", "").lower() == "true"
            rendered = [(f"{t} {line}" if stamped else line) + "\n" for t, line in lines]
            if query.get("follow", "").lower() != "true":
                tail = int(query["tailLines"]) if "tailLines" in query else len(rendered)
                text = "".join(rendered[len(rendered) - min(tail, len(rendered)) :])
                return self._send(200, text.encode(), "text/plain")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i, line in enumerate(rendered):
                    if drop_after is not None and i == drop_after:
                        # a broken connection mid-stream (an API server restart): half a line, no last chunk
                        with cluster.lock:
                            cluster.dropped_logs += 1
                        self._chunk(line[: len(line) // 2].encode())
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self._chunk(line.encode())
                    if delay:
                        time.sleep(delay)
                # like the kubelet: the stream stays open until the container ends or the pod goes
                while not cluster.pod_done(key) and not cluster.stopped.is_set():
                    time.sleep(0.01)
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler
