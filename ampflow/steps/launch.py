"""``ampflow launch``: run ``ampflow train`` on Kubernetes as a Kubeflow TrainJob (or PyTorchJob), and wait.

    ampflow launch --recipe tweets-bow --data /data/tweets --nodes 2 --gpus-per-node 8 \\
        --image registry.example.com/ampflow:0.1.0 --volume training-data:/data --dry-run
    ampflow launch --recipe tweets-bow --data /data/tweets --out /data/runs/bf16 --nodes 2 --gpus-per-node 8 \\
        --image registry.example.com/ampflow:0.1.0 --volume training-data:/data --precision bf16-mixed \\
        --mlflow-secret mlflow-credentials --toleration nvidia.com/gpu:NoSchedule \\
        --queue team-a --workload-priority high --queue-timeout 21600 --run-deadline 7200
    ampflow launch ... --api pytorchjob --priority-class high   # the v1 Training Operator

Exit codes: 0 the job succeeded; 1 it failed, hit its queue timeout or run deadline (the job is then
deleted), or the API refused it; 2 bad input (a server-side dry run's refusal included). A launch that
meets the same job already on the cluster (an orchestrator's retry) watches that job instead of
creating another. The manifest, the name rules, the container command and the Kueue labels are
described in ``ampflow.kube.manifests``; the README's ``kube`` section shows a manifest.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ampflow.config import PRECISIONS, STRATEGIES, ConfigError, parse_overrides
from ampflow.kube.manifests import (
    APIS,
    CLEAN_POD_POLICIES,
    DEFAULT_ACTIVE_DEADLINE_SECONDS,
    DEFAULT_API,
    LaunchSpec,
    build_manifest,
    parse_key_values,
    parse_tolerations,
    parse_volume,
)
from ampflow.steps import add_set_argument

HELP = "launch training on Kubernetes as a Kubeflow TrainJob or PyTorchJob and wait for its outcome"
# `--help` lists every RunConfig key: this step passes them all on
TAKES_ALL_SET_KEYS = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the run")
    g.add_argument(
        "--recipe", required=True, help="built-in recipe name or module:function (inside the image)"
    )
    g.add_argument("--data", required=True, help="prepared dataset as the pods see it (a path on a --volume)")
    g.add_argument("--out", help="run directory as the pods see it (default: in the pod, gone with it)")
    g.add_argument("--precision", default="32-true", help=f"one of {', '.join(PRECISIONS)} (default 32-true)")
    g.add_argument(
        "--strategy", help=f"one of {', '.join(STRATEGIES)} (default: ddp for several processes, else single)"
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    add_set_argument(g, "run configuration override for the pods (repeatable), e.g. --set max_steps=500")
    k = p.add_argument_group("the job")
    k.add_argument(
        "--nodes",
        type=int,
        required=True,
        help="nodes, one pod each (TrainJob numNodes; PyTorchJob: one Master, the rest Workers)",
    )
    k.add_argument(
        "--gpus-per-node",
        type=int,
        required=True,
        help="GPUs per pod (nvidia.com/gpu); one process per GPU; 0 runs one CPU process per pod",
    )
    k.add_argument(
        "--image", required=True, help="training image with ampflow installed (pin a tag or digest)"
    )
    k.add_argument(
        "--name",
        help="job name (made a DNS-1035 label); default: derived from the run, stable across retries",
    )
    k.add_argument(
        "--api",
        default=DEFAULT_API,
        help=f"one of {', '.join(APIS)} (default {DEFAULT_API}: Kubeflow Trainer v2; pytorchjob: the v1 "
        "Training Operator)",
    )
    k.add_argument("--namespace", default="default", help="namespace (default: default)")
    k.add_argument("--runtime", default="torch-distributed", help="ClusterTrainingRuntime for --api trainjob")
    k.add_argument(
        "--node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="repeatable, or comma-separated",
    )
    k.add_argument(
        "--toleration",
        "--tolerations",
        action="append",
        default=[],
        metavar="KEY[=VALUE][:EFFECT]",
        help="repeatable; without =VALUE the toleration uses operator Exists (a JSON toleration object works too)",
    )
    k.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="CLAIM:MOUNT_PATH",
        help="mount a PersistentVolumeClaim in every pod (repeatable, or comma-separated)",
    )
    k.add_argument("--cpu", help="CPU request per pod (e.g. 8, 500m)")
    k.add_argument("--memory", help="memory request per pod (e.g. 64Gi)")
    k.add_argument("--service-account", help="service account of the pods")
    k.add_argument(
        "--mlflow-secret",
        metavar="SECRET",
        help="Kubernetes Secret whose keys (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, "
        "AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL) become the pods' environment",
    )
    k.add_argument(
        "--tracking-uri", help="MLflow tracking URI without credentials (else from --mlflow-secret)"
    )
    q = p.add_argument_group("queue and priority (a shared cluster)")
    q.add_argument(
        "--queue",
        metavar="LOCALQUEUE",
        help="Kueue LocalQueue: sets the job's kueue.x-k8s.io/queue-name label; Kueue then holds the job "
        "suspended until its whole gang of pods fits the queue's quota",
    )
    q.add_argument(
        "--priority-class",
        metavar="NAME",
        help="the pods' priorityClassName (a PriorityClass; also Kueue's priority without "
        "--workload-priority); PyTorchJob only: a TrainJob takes it from its runtime",
    )
    q.add_argument(
        "--workload-priority",
        metavar="NAME",
        help="Kueue WorkloadPriorityClass: sets the job's kueue.x-k8s.io/priority-class label",
    )
    r = p.add_argument_group("policies and deadlines")
    r.add_argument(
        "--clean-pod-policy", help=f"PyTorchJob: one of {', '.join(CLEAN_POD_POLICIES)} (default Running)"
    )
    r.add_argument(
        "--backoff-limit", type=int, help="PyTorchJob: pod recreations before the job fails (default 3)"
    )
    r.add_argument(
        "--active-deadline-seconds",
        type=int,
        default=DEFAULT_ACTIVE_DEADLINE_SECONDS,
        help=f"server-side deadline; 0 for none (default {DEFAULT_ACTIVE_DEADLINE_SECONDS})",
    )
    r.add_argument(
        "--ttl-seconds-after-finished",
        type=int,
        help="PyTorchJob: delete the finished job after this long (default 86400)",
    )
    r.add_argument(
        "--queue-timeout",
        type=float,
        metavar="SECONDS",
        help="delete the job and fail when it has not started running this long after submission "
        "(suspended by Kueue, pods unschedulable or pulling; default: wait as long as the queue needs)",
    )
    r.add_argument(
        "--run-deadline",
        "--timeout",
        dest="run_deadline",
        type=float,
        metavar="SECONDS",
        help="delete the job and fail when it has not ended this long after it started running "
        "(default: active deadline + 300 s; --timeout is the old spelling)",
    )
    o = p.add_argument_group("this command")
    o.add_argument(
        "--dry-run",
        action="store_true",
        help="print the manifest as YAML and submit nothing; with a reachable cluster the API server also "
        "checks it (dryRun=All: schema, admission webhooks, quotas)",
    )
    o.add_argument("--context", help="kubeconfig context (default: the current one)")
    o.add_argument(
        "--poll-interval", type=float, default=5.0, help="seconds between status polls (default 5)"
    )
    o.add_argument("--no-logs", action="store_true", help="do not stream the master's log")


def spec_from_args(args: argparse.Namespace) -> LaunchSpec:
    deadline = args.active_deadline_seconds
    return LaunchSpec(
        recipe=args.recipe,
        data=args.data,
        out=args.out,
        precision=args.precision,
        strategy=args.strategy,
        compile=bool(args.compile),
        overrides=parse_overrides(args.overrides),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        image=args.image,
        name=args.name,
        api=args.api,
        namespace=args.namespace,
        runtime=args.runtime,
        queue=args.queue or None,
        priority_class=args.priority_class or None,
        workload_priority=args.workload_priority or None,
        node_selector=parse_key_values("--node-selector", args.node_selector),
        tolerations=tuple(t for text in args.toleration for t in parse_tolerations(text)),
        volumes=tuple(parse_volume(v) for text in args.volume for v in text.split(",") if v.strip()),
        cpu=args.cpu,
        memory=args.memory,
        service_account=args.service_account,
        mlflow_secret=args.mlflow_secret,
        tracking_uri=args.tracking_uri,
        clean_pod_policy=args.clean_pod_policy,
        backoff_limit=args.backoff_limit,
        active_deadline_seconds=None if deadline == 0 else deadline,
        ttl_seconds_after_finished=args.ttl_seconds_after_finished,
    )


def cli(args: argparse.Namespace) -> int:
    for name in ("queue_timeout", "run_deadline"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            flag = "--" + name.replace("_", "-") + (" (or --timeout)" if name == "run_deadline" else "")
            raise ConfigError(f"{flag} must be a positive number of seconds, got {value:g}")
    if args.poll_interval <= 0:
        raise ConfigError(f"--poll-interval must be positive, got {args.poll_interval}")
    spec = spec_from_args(args)
    if args.name is not None and spec.job_name != args.name:
        print(
            f"ampflow launch: job name {args.name!r} is not a DNS-1035 label; using {spec.job_name!r}",
            file=sys.stderr,
        )
    if args.dry_run:
        return run(spec, dry_run=True, context=args.context)["exit_code"]
    from ampflow.kube.client import LaunchError

    try:
        result = run(
            spec,
            queue_timeout=args.queue_timeout,
            run_deadline=args.run_deadline,
            poll_interval=args.poll_interval,
            stream_logs=not args.no_logs,
            context=args.context,
        )
    except LaunchError as exc:
        # one clear line, no traceback: it says what the API answered and what to do
        print(f"ampflow launch: failed: {exc}", file=sys.stderr)
        return 1
    return report(result)


def report(result: dict[str, Any], err: TextIO | None = None) -> int:
    """Print the outcome (a failure to stderr, with the master's log tail); return the exit code."""
    err = err or sys.stderr
    what = f"{result['kind']} {result['namespace']}/{result['name']}"
    if result["exit_code"] == 0:
        print(f"{what} succeeded" + (" (reattached)" if result["reattached"] else ""))
        return 0
    detail = ": ".join(x for x in (result["reason"], result["message"]) if x)
    if result["status"] == "DeadlineExceeded" and result.get("deadline"):
        # which clock fired and how long the job had waited and run: the queue or the training itself
        detail += f" (queued {result['queued_s']:.0f} s, ran {result['ran_s']:.0f} s)"
    print(f"ampflow launch: failed: {what} {result['status']}" + (f": {detail}" if detail else ""), file=err)
    if result["log_tail"]:
        print(f"--- last {len(result['log_tail'])} lines of the master's log ---", file=err)
        for line in result["log_tail"]:
            print(line, file=err)
    else:
        print("(no master log could be read)", file=err)
    if not result["deleted"]:
        print(
            f"inspect: kubectl -n {result['namespace']} describe {result['kind'].lower()} {result['name']}",
            file=err,
        )
    return result["exit_code"]


def run(
    spec: LaunchSpec,
    *,
    dry_run: bool = False,
    queue_timeout: float | None = None,
    run_deadline: float | None = None,
    poll_interval: float = 5.0,
    stream_logs: bool = True,
    context: str | None = None,
    api_client: Any = None,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Build the manifest; unless ``dry_run``, submit (or reattach), watch, and return the outcome.

    The result dict: ``manifest`` always; after a submit also name, namespace, kind, status
    (Succeeded | Failed | DeadlineExceeded), reason, message, reattached, deleted, exit_code, log_tail,
    deadline (None, ``queue`` or ``run``: which one fired), queued_s and ran_s (seconds). A refusal by the
    API (or no API at all) raises ``LaunchError`` (exit 1).

    ``dry_run`` prints the manifest, then asks the API server when one is reachable (see
    :func:`server_dry_run`); its dict holds ``manifest``, ``server`` (the answer, or None when only
    local checks ran) and ``exit_code`` (2 when the server refused the job).
    """
    manifest = build_manifest(spec)
    if dry_run:
        import yaml

        print(yaml.safe_dump(manifest, sort_keys=False), end="", file=out or sys.stdout)
        return server_dry_run(manifest, context=context, api_client=api_client)
    from ampflow.kube.client import JobClient, api_client_from_config

    client = api_client or api_client_from_config(context)
    try:
        jobs = JobClient(client, poll_interval=poll_interval, out=out, stream_logs=stream_logs)
        outcome = jobs.run(manifest, queue_timeout=queue_timeout, run_deadline=run_deadline)
    finally:
        if api_client is None:
            client.close()
    return {"manifest": manifest, **outcome.to_dict()}


def server_dry_run(
    manifest: dict[str, Any], *, context: str | None = None, api_client: Any = None, err: TextIO | None = None
) -> dict[str, Any]:
    """Ask the API server to admit ``manifest`` without persisting it (``dryRun=All``), when one is reachable.

    Kubernetes API conventions (dry-run): a create with ``dryRun=All`` runs every stage of a real one,
    schema validation, mutating and validating admission webhooks (the operator's, Kueue's) and
    ResourceQuota, and stores nothing. A refusal is bad input (exit 2, the server's own message); no
    credentials or no answer means the local checks (:func:`~ampflow.kube.manifests.validate_admission`,
    already passed) are all there is, and the line says so. One line on stderr either way.
    """
    err = err or sys.stderr
    result: dict[str, Any] = {"manifest": manifest, "server": None, "exit_code": 0}
    try:
        from ampflow.kube.client import JobClient, LaunchError, api_client_from_config
    except ImportError:  # no kubernetes package (the kube extra): local checks only
        print("ampflow launch: dry run checked locally (the kubernetes package is not installed)", file=err)
        return result
    try:
        client = api_client or api_client_from_config(context)
    except LaunchError as exc:
        print(f"ampflow launch: dry run checked locally only; no cluster to ask ({exc})", file=err)
        return result
    try:
        answer = JobClient(client, max_api_failures=1, stream_logs=False).dry_run(manifest)
    finally:
        if api_client is None:
            client.close()
    result["server"] = answer
    if answer["verdict"] == "unreachable":
        print(f"ampflow launch: dry run checked locally only; {answer['message']}", file=err)
    elif answer["verdict"] == "refused":
        print(f"ampflow launch: the API server refused the job (dry run): {answer['message']}", file=err)
        result["exit_code"] = 2
    else:
        print(f"ampflow launch: dry run: {answer['message']}", file=err)
    return result
