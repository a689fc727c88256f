"""One progress policy for long loops (training steps, generation): a rich bar when stderr is a terminal; otherwise
(a log file, CI, ``nohup``) one plain line every ``LORASP_PROGRESS_EVERY`` seconds (default 30) with the count,
percent, the loop's own figures (loss, tokens/s), elapsed time and ETA, so a run that writes to a file is never
silent for minutes. ``enabled=False`` (``--no-progress``) prints nothing."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, TextIO

DEFAULT_EVERY = 30.0


def _every() -> float:
    try:
        return max(0.0, float(os.environ.get("LORASP_PROGRESS_EVERY", DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


def fmt_duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


class Progress:
    """``Progress(label, total, completed=0)``; ``update(completed=N | advance=1, **figures)``; ``close()``.

    ``figures`` are the loop's own numbers, already formatted (``loss="0.4213"``, ``**{"tok/s": "1,234"}``), shown
    as ``NAME VALUE`` in the order of ``columns``: as bar columns on a terminal, after the count in plain lines."""

    def __init__(self, label: str, total: int, *, completed: int = 0, enabled: bool = True,
                 columns: tuple[str, ...] = (), stream: TextIO | None = None, every: float | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.completed = label, max(0, int(total)), int(completed)
        self.enabled, self.columns, self.clock = enabled, columns, clock
        self.stream = stream if stream is not None else sys.stderr
        self.every = _every() if every is None else every
        self.figures: dict[str, Any] = {c: "-" for c in columns}
        self.t0 = clock()
        self.start_done = self.completed
        self.last_line = self.t0
        self.lines = 0
        self.bar = None
        if not enabled:
            return
        is_tty = terminal if terminal is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        if is_tty:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
            cols += [TextColumn(f"{c} {{task.fields[{c}]}}") for c in columns]
            cols += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
            self.bar = RichProgress(*cols, console=Console(file=self.stream, force_terminal=True), transient=False)
            self.task = self.bar.add_task(label, total=self.total, completed=self.completed, **self.figures)
            self.bar.start()

    def update(self, completed: int | None = None, *, advance: int = 0, **figures: Any) -> None:
        if not self.enabled:
            return
        self.completed = int(completed) if completed is not None else self.completed + advance
        self.figures.update(figures)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.completed, **figures)
            return
        now = self.clock()
        if now - self.last_line >= self.every:
            self._line(now)

    def _line(self, now: float) -> None:
        el = now - self.t0
        done = self.completed - self.start_done
        pct = f" ({self.completed / self.total:.0%})" if self.total else ""
        parts = [f"{self.label}: {self.completed}/{self.total}{pct}"]
        parts += [f"{c} {self.figures[c]}" for c in self.columns if self.figures.get(c) not in (None, "", "-")]
        parts.append(f"elapsed {fmt_duration(el)}")
        if 0 < done and self.completed < self.total:
            parts.append(f"ETA {fmt_duration(el / done * (self.total - self.completed))}")
        print(", ".join(parts), file=self.stream, flush=True)
        self.last_line = now
        self.lines += 1

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            return
        now = self.clock()
        if self.lines or now - self.t0 >= self.every:  # a long loop ends with its final count
            self._line(now)
        self.enabled = False
