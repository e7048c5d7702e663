"""A camera's scene model trained in a child process of its own (cold start).

:class:`pipelines.learning.SceneLearner` hands the training (the scene model's members and
their posture flows, :func:`fit_scene`) to a ``spawn`` child (:func:`run_scene_job`) and
calibrates the result itself. Why a child:

- its heap: a service bounds glibc's mmap threshold (:func:`forecasting.allocator.
  bound_heap_growth`), under which training maps and faults in its tensors afresh at every
  step; the child keeps its freed memory (:func:`forecasting.allocator.retain_freed_memory`).
  3 minutes of AIHub2 (3 members, 4 posture flows, 2 threads) trained and calibrated in
  330 s inside a bounded service process and in 138 s with the child, the same model bit
  for bit (``bench/cold_start_eval.py`` under a bounded heap);
- its failures: a child that dies (the kernel's OOM killer prefers it: its
  ``oom_score_adj`` is 1000) or hangs past its time limit fails only its camera, with the
  reason.

The child ends with the service: it dies with its parent (``PR_SET_PDEATHSIG``, Linux), it
ignores the terminal's Ctrl+C (the service stops it), and a graceful stop (the ``stop``
event of :func:`run_scene_job`) or the interpreter's exit ends it (SIGTERM, SIGKILL after 5
s), which is then not a failure (:class:`TrainingStoppedError`). Its log records and Python warnings are sent to the service and
logged there (through the service's handlers, JSON and redaction included).

A script that drives :class:`~pipelines.learning.SceneLearner` must guard its top level
with ``if __name__ == "__main__":`` (``spawn`` imports the main module in the child).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util  # its exit hook is registered before ours (see the end)
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.skeleton import FLIP_INDEX
from forecasting.allocator import retain_freed_memory
from forecasting.checkpoint import save_checkpoint
from forecasting.posture import PostureConfig
from forecasting.torch_model import ModelConfig
from forecasting.train import TrainConfig, fit_posture, train
from forecasting.windows import WindowConfig, Windows
from pipelines.broker import die_with_parent

log = logging.getLogger(__name__)

#: Set at interpreter exit: children that end now were stopped.
_exiting = threading.Event()
_children: set[BaseProcess] = set()
_children_lock = threading.Lock()


class TrainingStoppedError(Exception):
    """The training child was stopped with the service (not a failure of the camera)."""


@dataclass(frozen=True, slots=True)
class SceneJob:
    """What the training child of one camera needs (pickled to it).

    Attributes:
        path: where the trained checkpoint is saved (no calibration yet).
        train, val: training and held-out windows (:class:`forecasting.windows.Windows`).
        model, train_cfg, windows: the scene model's, training's and windows' settings.
        posture: the posture flows to fit after the scene model, or None for none.
        deadline: ``time.monotonic()`` value (seconds; system-wide on Linux) after which
            no further posture flow starts (the first one always trains).
        extra: checkpoint metadata (scene, training frames, fps).
        threads: torch threads of the child.
    """

    path: Path
    train: Windows
    val: Windows
    model: ModelConfig
    train_cfg: TrainConfig
    windows: WindowConfig
    posture: PostureConfig | None
    deadline: float
    extra: dict[str, object]
    threads: int


def fit_scene(job: SceneJob) -> dict[str, float]:
    """Train the scene model and its posture flows and save the checkpoint at ``job.path``
    (in the calling process; :func:`run_scene_job` calls it in a child process).

    Returns:
        The training's record: validation NLL, seconds, epochs, mean best epoch of the
        members, posture flows fitted, and ``heap_retained`` (1.0 when this process kept
        its freed heap memory, :func:`forecasting.allocator.retain_freed_memory`).
    """
    torch.set_num_threads(max(1, job.threads))
    retained = retain_freed_memory()
    result = train(job.train, job.val, job.model, job.train_cfg, FLIP_INDEX, progress=False)
    flows = 0
    if job.posture is not None:
        seed = job.train_cfg.seed
        args = (result.model, job.train, job.val, job.posture, seed, FLIP_INDEX, None)
        flows = fit_posture(*args, job.deadline).cfg.flows
    save_checkpoint(
        job.path, result.model, job.windows, job.train_cfg, result.history, extra=job.extra
    )
    return {
        "val_nll": float(result.best_val_nll),
        "scene_seconds": float(result.seconds),
        "scene_epochs": float(len(result.history)),
        # mean over the members (an ensemble's own best_epoch is 0)
        "best_epoch": float(np.mean([m["best_epoch"] for m in result.members])),
        "posture_flows": float(flows),
        "heap_retained": float(retained),
    }


class _PipeHandler(logging.Handler):
    """Sends the child's log records to the parent, which logs them with its handlers."""

    def __init__(self, conn: Connection):
        super().__init__()
        self._conn = conn
        self._send = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": record.getMessage(),
                "exc_text": self.formatter.formatException(record.exc_info)
                if record.exc_info and self.formatter is not None
                else record.exc_text,
                "processName": record.processName,
                "created": record.created,
            }
            with self._send:
                self._conn.send(("log", fields))
        except Exception:  # a record must never break training
            self.handleError(record)


def _exit_now(signum: int, frame: object) -> None:
    """SIGTERM in the child: exit through Python's clean-up (multiprocessing unlinks the
    semaphores this process made, e.g. tqdm's lock; SIGKILL would leak them, and the
    resource tracker would print a warning into the service's output)."""
    raise SystemExit(128 + signum)


def _scene_child(conn: Connection, job: SceneJob, parent: int, level: int) -> None:
    """Child process entry: :func:`fit_scene`, its record or its error sent on ``conn``."""
    dying = die_with_parent(signal.SIGKILL, parent)  # the parent's waiting thread outlives us
    if dying is not None:
        dying()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops us, not the terminal
    signal.signal(signal.SIGTERM, _exit_now)
    with contextlib.suppress(OSError):  # the OOM killer's first choice, not the service
        Path("/proc/self/oom_score_adj").write_text("1000")
    handler = _PipeHandler(conn)
    handler.setFormatter(logging.Formatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    try:
        reply: tuple[str, object] = ("ok", fit_scene(job))
    except Exception as exc:  # sent to the parent, which fails the camera with it
        reply = ("error", f"{type(exc).__name__}: {exc}")
    try:
        conn.send(reply)
    except OSError:  # the service is gone: nobody to tell
        pass
    finally:
        conn.close()


def _how_it_ended(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
    return f"exit code {code}"


def _end(proc: BaseProcess, grace: float = 5.0) -> None:
    """SIGTERM (the child exits cleanly, between two torch operations), then SIGKILL after
    ``grace`` seconds."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace)
    if proc.is_alive():
        proc.kill()


def _at_exit() -> None:
    """End every training child at interpreter exit (their cameras stop, not fail)."""
    _exiting.set()
    with _children_lock:
        procs = list(_children)
    for proc in procs:
        _end(proc)


def run_scene_job(
    job: SceneJob, name: str, timeout: float, stop: threading.Event | None = None
) -> dict[str, float]:
    """Run :func:`fit_scene` in a child process (``spawn``) and wait for it; the child's
    log records are logged here as they come.

    Arguments:
        job: the training.
        name: the child's process name (``learn-<camera>``).
        timeout: seconds after which a child that has not answered is killed.
        stop: set it to kill the child (a graceful stop; checked every 0.5 s).

    Raises:
        TrainingStoppedError: ``stop`` was set, or the interpreter is exiting.
        RuntimeError: training failed in the child (its error), the child died without an
            answer (its exit code or signal; SIGKILL usually means out of memory), or it
            did not answer within ``timeout``.
    """
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    level = logging.getLogger().getEffectiveLevel()
    proc = ctx.Process(
        target=_scene_child, args=(send, job, os.getpid(), level), name=name, daemon=True
    )
    end = time.monotonic() + timeout
    stop = stop or threading.Event()
    try:
        with _children_lock:
            if _exiting.is_set() or stop.is_set():
                raise TrainingStoppedError(f"{name}: the service is stopping")
            proc.start()
            _children.add(proc)
        send.close()  # the child holds the only sending end: its death reads as EOF
        payload = _wait(recv, proc, name, end, timeout, stop)
    finally:
        recv.close()
        send.close()
        _reap(proc)
    return payload


def _wait(
    recv: Connection,
    proc: BaseProcess,
    name: str,
    end: float,
    timeout: float,
    stop: threading.Event,
) -> dict[str, float]:
    """The child's answer, its log records handled on the way (see :func:`run_scene_job`)."""
    while True:
        left = end - time.monotonic()
        if stop.is_set():
            _end(proc)  # its death reads as EOF below
        elif left <= 0:
            proc.kill()
            raise RuntimeError(
                f"the training process {name} did not finish within {timeout / 60:.0f} min; "
                "it was stopped"
            )
        if not recv.poll(min(max(left, 0.0), 0.5)):
            continue
        try:
            kind, payload = recv.recv()
        except EOFError:
            proc.join(10)
            if stop.is_set() or _exiting.is_set():
                raise TrainingStoppedError(f"{name} was stopped with the service") from None
            raise RuntimeError(
                f"the training process {name} died without a result: {_how_it_ended(proc.exitcode)}"
            ) from None
        if kind == "log":
            _log_record(payload)
        elif kind == "ok":
            return dict(payload)
        else:
            raise RuntimeError(str(payload))


def _log_record(fields: dict[str, Any]) -> None:
    record = logging.makeLogRecord(fields)
    logging.getLogger(record.name).handle(record)


def _reap(proc: BaseProcess) -> None:
    """Wait for a child that answered (or was killed); kill one that lingers."""
    if proc.pid is not None:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    with _children_lock:
        _children.discard(proc)


# Registered after multiprocessing's own exit hook (imported above), so it runs first: the
# children it would terminate are already ended as stopped, not failed.
atexit.register(_at_exit)

__all__ = ["SceneJob", "TrainingStoppedError", "fit_scene", "run_scene_job"]
