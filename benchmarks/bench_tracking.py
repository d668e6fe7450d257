"""What MLflow tracking costs a training step, against a real local `mlflow server`.

    python -m benchmarks.bench_tracking                 # 400 steps of a small MLP, batch 64
    python -m benchmarks.bench_tracking --steps 1000 --hidden 1024

Prints, not asserts (timings belong here, not in tests):
- the step time of a plain training loop (no tracking);
- the training thread's cost of ``tracker.log_metrics`` per step (a buffered append) and its share of
  the step time: the goal is under 1%;
- the CPU time the writer thread spends per training step (spool JSON, state file, HTTP): what it
  takes from the machine, measured with thread CPU clocks so other load does not blur it;
- the end-to-end slowdown of the same loop with tracking on (the writer thread sends ``log_batch``
  once a second; on few cores it competes for the GIL and the CPU), medians over interleaved rounds;
- for scale, what a synchronous ``MlflowClient.log_metric`` per metric per step would cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def _loop(model, opt, x, y, steps, tracker=None, per_call=None):
    import torch

    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        value = loss.item()
        if tracker is not None:
            c0 = time.perf_counter()
            tracker.log_metrics(
                {
                    "loss": value,
                    "lr": 1e-3,
                    "step_time_s": times[-1] if times else 0.0,
                    "samples_per_s": 64.0,
                },
                step=step,
            )
            per_call.append(time.perf_counter() - c0)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)

    import torch

    from ampflow import tracking
    from ampflow.config import RunConfig
    from ampflow.tracking.server import LocalServer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 3)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(args.batch, 256), torch.randint(0, 3, (args.batch,))
    _loop(model, opt, x, y, 20)  # warm-up

    os.environ.setdefault("AMPFLOW_SYSTEM_METRICS", "0")  # measure our logging, not psutil sampling
    with tempfile.TemporaryDirectory() as root, LocalServer(os.path.join(root, "server")) as server:
        os.environ["MLFLOW_TRACKING_URI"] = server.uri
        os.environ["AMPFLOW_EXPERIMENT"] = "bench/tracking"
        plain, tracked, calls, writer_cpu = [], [], [], []
        for r in range(args.rounds):
            # alternate which variant goes first: drift on a shared machine then hits both alike
            if r % 2:
                plain.append(statistics.median(_loop(model, opt, x, y, args.steps)))
            tracker = tracking.start_run("train", config=RunConfig(), run_dir=os.path.join(root, f"run{r}"))
            per_call: list[float] = []
            tracked.append(statistics.median(_loop(model, opt, x, y, args.steps, tracker, per_call)))
            calls.extend(per_call)
            tracker.close("FINISHED")
            writer_cpu.append(tracker.writer_cpu_s / args.steps)
            if not r % 2:
                plain.append(statistics.median(_loop(model, opt, x, y, args.steps)))

        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.uri)
        run_id = tracker.run_id
        n_logged = len(client.get_metric_history(run_id, "train/loss"))
        sync_calls = []
        for step in range(50):
            c0 = time.perf_counter()
            for key in ("loss", "lr", "step_time_s", "samples_per_s"):
                client.log_metric(run_id, f"sync/{key}", 0.1, step=step)
            sync_calls.append(time.perf_counter() - c0)

    step_s = statistics.median(plain)
    call_s = statistics.median(calls)
    call_p99 = sorted(calls)[int(0.99 * (len(calls) - 1))]
    overhead = statistics.median(tracked) / step_s - 1
    print(
        f"bench_tracking: {args.rounds} rounds x {args.steps} steps, MLP 256-{args.hidden}-3, batch {args.batch}, "
        f"server {server.uri} (SQLite, 1 worker)"
    )
    print(f"  plain step time (median)            {step_s * 1e3:8.3f} ms")
    print(
        f"  log_metrics on the training thread  {call_s * 1e6:8.1f} us median, {call_p99 * 1e6:.1f} us p99 "
        f"= {call_s / step_s:.3%} of a step (goal < 1%)"
    )
    wcpu = statistics.median(writer_cpu)
    print(
        f"  writer thread CPU per step          {wcpu * 1e6:8.1f} us = {wcpu / step_s:.3%} of a step "
        "(spool JSON + log_batch, off the training thread)"
    )
    print(
        f"  end-to-end step time with tracking  {statistics.median(tracked) * 1e3:8.3f} ms "
        f"({overhead:+.2%} vs plain, median of {args.rounds} rounds; noise included)"
    )
    print(
        f"  synchronous log_metric x4 per step  {statistics.median(sync_calls) * 1e3:8.3f} ms "
        f"= {statistics.median(sync_calls) / step_s:.1%} of a step (what batching avoids)"
    )
    print(f"  every step arrived: {n_logged} of {args.steps} train/loss points in the last run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
