"""How a tracked run ends, whatever ends the process: one SIGTERM and exit scheme for every run.

- SIGTERM (a pod's eviction, an orchestrator's cancel) raises :class:`Terminated`, a
  ``KeyboardInterrupt``, so that ``finally`` blocks run and the run ends KILLED, as on Ctrl-C. The
  handler is in place while at least one run is open, whether a tracker (:func:`register`) or a
  :func:`tracked` block opened it; when the last one closes, the handler that was there before is
  put back.
- At interpreter exit, a run that nobody closed ends KILLED after a SIGTERM, FAILED otherwise.
- A step that was SIGKILLed (OOM, eviction) cannot close its run: the exit handlers of KFP pipelines
  and Airflow DAGs call :func:`close_running_runs`.

Import-light: mlflow loads inside :func:`close_running_runs` only.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Protocol

Status = Literal["FINISHED", "FAILED", "KILLED"]


class Closable(Protocol):
    """What this module needs of a run: close it once with a status."""

    def close(self, status: Status = "FINISHED") -> None: ...


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that ``finally`` blocks run and runs end as KILLED."""


_SIGNALLED = threading.Event()  # a SIGTERM arrived: runs closed at exit end KILLED, not FAILED
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()  # open trackers; weak, so a dropped one is not kept
_lock = threading.Lock()
_holders = 0  # open runs that want the SIGTERM handler
_previous: Any = None  # the handler ours replaced; None while ours is not installed


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGNALLED.set()
    raise Terminated(f"signal {signum}")


def _acquire(take_over: bool) -> None:
    """One more open run. Installs the handler unless it is in place; over another program's
    handler only when ``take_over`` (a step owns its process, a library tracker does not)."""
    global _holders, _previous
    with _lock:
        _holders += 1
        if _previous is not None or threading.current_thread() is not threading.main_thread():
            return  # installed already, or not allowed: signal.signal works on the main thread only
        current = signal.getsignal(signal.SIGTERM)
        if take_over or current in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
            _previous = signal.SIG_DFL if current is None else current


def _release() -> None:
    """One run fewer; the last one puts the previous handler back."""
    global _holders, _previous
    with _lock:
        _holders = max(0, _holders - 1)
        if _holders or _previous is None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # nobody replaced ours meanwhile
            signal.signal(signal.SIGTERM, _previous)
        _previous = None


def register(tracker: Any) -> None:
    """Track ``tracker`` (it has ``closed`` and ``close(status)``) until :func:`unregister`: SIGTERM
    handling while it is open, closed at exit if nobody closed it. A program's own SIGTERM handler
    is left alone."""
    _LIVE.add(tracker)
    _acquire(take_over=False)


def unregister(tracker: Any) -> None:
    """``tracker`` is closed: it no longer needs the SIGTERM handler nor the exit hook."""
    if tracker in _LIVE:
        _LIVE.discard(tracker)
        _release()


@contextlib.contextmanager
def tracked(tracker: Closable) -> Iterator[Closable]:
    """Close ``tracker`` FINISHED, FAILED on an exception, KILLED on SIGTERM or Ctrl-C.

    The steps wrap their work in it: SIGTERM raises :class:`Terminated` inside the block (whatever
    handler was there, restored on leaving), and the exception propagates after the close.
    """
    _acquire(take_over=True)
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.close("KILLED")
        raise
    except BaseException:
        tracker.close("FAILED")
        raise
    else:
        tracker.close("FINISHED")
    finally:
        _release()


def _at_exit() -> None:
    status = "KILLED" if _SIGNALLED.is_set() else "FAILED"
    for tracker in list(_LIVE):
        if not tracker.closed:
            tracker.close(status)


atexit.register(_at_exit)


def close_running_runs(
    tag: str,
    value: str,
    *,
    status: Status = "FAILED",
    uri: str | None = None,
    run_ids: Iterable[str] = (),
) -> list[str]:
    """Mark every RUNNING run tagged ``tag=value``, and every RUNNING run among ``run_ids``, as
    ``status``; returns the run ids it closed.

    The exit handlers of KFP pipelines and Airflow DAGs call this: a step that was SIGKILLed (OOM,
    eviction) never got to close its own run, but it carried its pipeline's run id as a tag, and
    recorded its run id in its run directory (``ampflow close-runs --run-root`` passes those as
    ``run_ids``; an id the store does not know is skipped). ``uri`` defaults to
    :func:`ampflow.tracking.tracker.tracking_uri`. Raises what MLflow raises when the store cannot
    be reached; needs the tracking extra (``ImportError`` without mlflow).
    """
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ampflow.tracking.tracker import tracking_uri

    client = MlflowClient(uri or tracking_uri())
    closed: list[str] = []
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if experiment_ids:
        # the filter grammar has no escaping for quotes; a run id never contains one
        safe = value.replace("'", "")
        query = f"tags.`{tag}` = '{safe}' and attributes.status = 'RUNNING'"
        for run in client.search_runs(experiment_ids, filter_string=query, max_results=1000):
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    for run_id in run_ids:
        if run_id in closed:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue  # recorded by a run directory of another store, or deleted since
            raise
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, status=status)
            closed.append(run_id)
    return closed
