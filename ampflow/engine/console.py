"""What a run prints while it trains: a tqdm bar on a terminal, plain log lines otherwise; rank 0 only.

The samples/s of a progress line is the rate of the one step it reports (that step's samples over
its wall clock), and a step inside the warm-up says so: the figure of the run's summary is another
one, the timed window's (its samples over its wall clock, warm-up steps left out), which a reader
should not expect a progress line to match.
"""

from __future__ import annotations

import sys


class ProgressLog:
    """tqdm on a terminal, plain log lines every ``log_every`` steps otherwise (and at ``total``).

    ``timed_after``: the last step (1-based, counted over the whole run) that the throughput window
    leaves out (warm-up, a compiling step, profiled steps); the steps up to it are marked warm-up.
    """

    def __init__(self, total: int, initial: int, log_every: int, enabled: bool, timed_after: int = 0):
        self.total, self.log_every, self.enabled = total, log_every, enabled
        self.timed_after = timed_after
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float, sps: float | None, scale: float | None) -> None:
        """Report optimizer step ``step`` (1-based): its loss, LR, its own samples/s and loss scale (or None)."""
        if not self.enabled:
            return
        warmup = step <= self.timed_after
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
            if sps:
                post["samples/s (this step)"] = f"{sps:.0f}" + (" warm-up" if warmup else "")
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif step % self.log_every == 0 or step == self.total:
            extra = f" scale {scale:g}" if scale is not None else ""
            rate = f" {sps:.0f} samples/s this step{' (warm-up, untimed)' if warmup else ''}" if sps else ""
            print(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.3e}{rate}{extra}", flush=True)

    def close(self) -> None:
        """Close the bar (no-op for log lines)."""
        if self.bar is not None:
            self.bar.close()
