"""The terminal's progress display, itself an observer plugin of the stage hooks.

On a terminal, a stage that runs longer than a second gets a live line with its elapsed time
(and a bar with the stage's own status, such as the distillation loss, when it reports
progress), replaced by a one-line result when it finishes. Elsewhere (pipes, CI logs) it
prints nothing, so that stdout and stderr stay clean for machines.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from edgex.plugins import StageEvent, hookimpl

_VERBS = {
    "load": "loading the model",
    "compress": "compressing",
    "reference": "running the reference",
    "convert": "converting",
    "validate": "validating",
    "report": "writing the report",
}
SPINNER = "|/-\\"
SHOW_AFTER_S = 1.0
BAR_WIDTH = 20


class ProgressDisplay:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._current: tuple[str, float] | None = None
        self._status = ""  # the running stage's own progress: bar and detail
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _label(self, event: StageEvent) -> str:
        verb = _VERBS.get(event.stage, event.stage)
        return f"{event.target}: {verb}" if event.target else verb

    def _tick(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            with self._lock:
                if self._current is None:
                    continue
                label, start = self._current
                elapsed = time.monotonic() - start
                if elapsed >= SHOW_AFTER_S:
                    self.stream.write(f"\r\x1b[2K{SPINNER[frame % 4]} {label} {self._status}{elapsed:.1f}s")
                    self.stream.flush()
                    frame += 1

    @hookimpl
    def edgex_stage_started(self, event: StageEvent) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._current = (self._label(event), time.monotonic())
            self._status = ""
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    @hookimpl
    def edgex_stage_progress(self, event: StageEvent) -> None:
        if not self.enabled:
            return
        bar = ""
        if event.progress is not None:
            done = round(min(max(event.progress, 0.0), 1.0) * BAR_WIDTH)
            bar = f"[{'#' * done}{'.' * (BAR_WIDTH - done)}] "
        with self._lock:
            self._status = f"{bar}{event.detail} " if event.detail else bar

    @hookimpl
    def edgex_stage_finished(self, event: StageEvent) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._current = None
            self._status = ""
            if event.seconds is not None and event.seconds >= SHOW_AFTER_S:
                mark = "x" if event.outcome in ("error", "failed") else "+"
                self.stream.write(f"\r\x1b[2K{mark} {self._label(event)} done in {event.seconds:.1f}s\n")
            else:
                self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def close(self) -> None:
        self._stop.set()
