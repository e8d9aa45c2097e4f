"""SIGTERM / Ctrl-C during SFT or RL: finish the current step, save a training state, exit non-zero.

A cluster preempting a job sends SIGTERM and waits a grace period; a user presses Ctrl-C. Either way the
first signal lets the step in progress finish (so no half-applied update is ever saved), after which the loop
writes a state and stops with :class:`Preempted`; ``longcot train ... --resume`` continues from it. A second
signal exits at once (the state from the last checkpoint is what remains).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after saving its state."""

    def __init__(self, signum: int, state_path: str) -> None:
        self.signum, self.state_path = signum, state_path
        super().__init__(f"stopped by {signal.Signals(signum).name}; training state saved to {state_path}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal


class StopOnSignal:
    """Context manager: while active, the first SIGTERM/SIGINT sets :attr:`signum`; a second one exits now."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            log.warning("second %s: exiting now (the last saved training state is kept)", signal.Signals(signum).name)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        log.warning("received %s: finishing this step, then saving a training state (send it again to exit now)",
                    signal.Signals(signum).name)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
