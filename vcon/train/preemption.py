"""Stopping cleanly when SLURM says so: a time limit near (submitit's USR2), a preemption, ``scontrol requeue``
(SIGTERM), or a plain ``kill``. The signal only sets a flag; the training loop saves a checkpoint at the next step
boundary, then hands the signal to whoever handled it before (submitit: requeue the job and exit)."""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            self.previous = {s: signal.signal(s, self._note) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        log.warning("caught %s: saving a checkpoint at the end of this step", signal.Signals(signum).name)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hand_over(self) -> None:
        """After the checkpoint is saved: let the previous handler act (submitit requeues the job and exits), then
        leave, so that the requeued job resumes from the checkpoint."""
        signum, previous = self.signum, self.previous.get(self.signum)
        self.__exit__()
        if callable(previous):
            previous(signum, None)
        raise SystemExit(128 + signum)
