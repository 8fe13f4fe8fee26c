"""Run one long job on a worker thread while the GUI thread polls it (no Slicer or Qt imports here).

The job is a callable ``work(progress, cancel)`` that reports ``progress(fraction, message)`` and
polls ``cancel()`` between its stages (the signature of ``x2ct.inference.predict``'s callbacks). It
must not touch MRML or Qt: only the GUI thread may, when it polls with :meth:`BackgroundTask.poll`
(X2CTReconLogic re-arms a ``qt.QTimer.singleShot`` for that). Cancel sets a flag that the job sees at
its next stage boundary; the thread is never killed.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional, Tuple

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]
Work = Callable[[Progress, CancelCheck], Any]


class BackgroundTask:
    """One ``work(progress, cancel)`` call on a daemon thread, with thread-safe progress and outcome."""

    def __init__(self, work: Work, name: str = "X2CTRecon worker") -> None:
        self._work = work
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._updates: List[Tuple[float, str]] = []
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _report(self, fraction: float, message: str) -> None:
        with self._lock:
            self._updates.append((float(fraction), str(message)))

    def _run(self) -> None:
        try:
            result = self._work(self._report, self._cancel.is_set)
        except BaseException as err:  # handed to the GUI thread, which decides how to show it
            with self._lock:
                self._error = err
        else:
            with self._lock:
                self._result = result

    def cancel(self) -> None:
        """Ask the job to stop at its next stage boundary."""
        self._cancel.set()

    @property
    def cancelRequested(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def poll(self) -> List[Tuple[float, str]]:
        """Progress updates (fraction in [0, 1], message) since the last poll, oldest first."""
        with self._lock:
            updates, self._updates = self._updates, []
        return updates

    def wait(self, timeoutSeconds: Optional[float] = None) -> bool:
        """Block until the job ends (tests); True when it has ended."""
        self._thread.join(timeoutSeconds)
        return self.done

    def outcome(self) -> Tuple[Any, Optional[BaseException]]:
        """(result, None) or (None, exception) once :attr:`done`."""
        if not self.done:
            raise RuntimeError("the background task has not finished")
        with self._lock:
            return self._result, self._error
