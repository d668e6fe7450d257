"""What a run prints while it trains: a tqdm bar on a terminal, plain log lines otherwise; rank 0 only."""

from __future__ import annotations

import sys


class ProgressLog:
    """tqdm on a terminal, plain log lines every ``log_every`` steps otherwise (and at ``total``)."""

    def __init__(self, total: int, initial: int, log_every: int, enabled: bool):
        self.total, self.log_every, self.enabled = total, log_every, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float, sps: float | None, scale: float | None) -> None:
        """Report optimizer step ``step`` (1-based): its loss, LR, samples/s and loss scale (or None)."""
        if not self.enabled:
            return
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
            if sps:
                post["samples/s"] = f"{sps:.0f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif step % self.log_every == 0 or step == self.total:
            extra = f" scale {scale:g}" if scale is not None else ""
            rate = f" {sps:.0f} samples/s" if sps else ""
            print(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.3e}{rate}{extra}", flush=True)

    def close(self) -> None:
        """Close the bar (no-op for log lines)."""
        if self.bar is not None:
            self.bar.close()
