"""The live line shown while a request waits: queue position, ETA and images done of n.

On a terminal it is a rich live display that redraws in place; anywhere else (a log, a pipe) it
prints one plain line whenever the progress changes, so logs stay readable.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from protocol.generation import RequestCheck


def describe(check: RequestCheck, total: int | None = None, elapsed: float = 0.0) -> str:
    """One line of progress, e.g. `queue position 2 · ETA ~14 s · 1/4 images done · 1 processing`; the
    coordinator's ETA counted down by the `elapsed` seconds since it answered."""
    count = total or max(check.finished + check.processing + check.waiting, 1)
    parts = []
    if check.cancelled:
        parts.append("cancelled" if check.done else "cancelled · finishing images in progress")
    elif check.done:
        parts.append("done")
    elif check.faulted:
        parts.append("faulted")
    elif check.waiting and check.queue_position:
        parts.append(f"queue position {check.queue_position}")
    elif check.processing:
        parts.append("generating")
    else:
        parts.append("queued")
    if not check.is_possible and not check.done:
        parts.append(check.is_possible_reason or "no online node can serve it yet")
    elif not check.done and not check.faulted and not check.cancelled:
        parts.append(f"ETA ~{format_seconds(max(0, round(check.wait_time - elapsed)))}")
    parts.append(f"{check.finished}/{count} images done")
    if check.processing and not check.done:
        parts.append(f"{check.processing} processing")
    if check.restarted:
        parts.append(f"{check.restarted} restarted")
    return " · ".join(parts)


def format_seconds(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 90:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class WaitDisplay:
    """`with WaitDisplay(...) as display: display.update(check)`; disabled, it shows nothing."""

    def __init__(self, request_id: str, *, console: Console, enabled: bool = True, total: int | None = None):
        self.request_id = request_id
        self.console = console
        self.enabled = enabled
        self.total = total
        self._live: Live | None = None
        self._last_line: str | None = None
        self._line = "waiting for the coordinator"
        self._check: RequestCheck | None = None  # the last answer, and when it came (for the countdown)
        self._checked_at = 0.0

    def __enter__(self) -> WaitDisplay:
        if self.enabled and self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True)
            self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop redrawing (also before prompting, so the prompt is not overwritten)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, check: RequestCheck) -> None:
        self._check, self._checked_at = check, time.monotonic()
        self._line = describe(check, self.total)
        if self._live is not None:
            self._live.update(self._render())
        elif self.enabled and self._line != self._last_line:
            self.console.print(f"{self.request_id}: {self._line}", highlight=False, soft_wrap=True)
        self._last_line = self._line

    def say(self, line: str) -> None:
        """Show a line that is not a check answer (the coordinator unreachable, say) in its place."""
        self._line, self._check = line, None
        if self._live is not None:
            self._live.update(self._render())
        elif self.enabled and line != self._last_line:
            self.console.print(f"{self.request_id}: {line}", highlight=False, soft_wrap=True)
        self._last_line = line

    def _render(self) -> RenderableType:
        return Countdown(self)

    def current_line(self) -> str:
        """The line as of now: the last answer's ETA counted down since it came."""
        if self._check is None:
            return self._line
        return describe(self._check, self.total, time.monotonic() - self._checked_at)


class Countdown:
    """Rendered again on each of the live display's refreshes, so the ETA counts down between answers."""

    def __init__(self, display: WaitDisplay) -> None:
        self.display = display
        self.spinner = Spinner("dots")

    def __rich__(self) -> RenderableType:
        # A short id keeps the line within a terminal; the full id was printed when it was submitted.
        self.spinner.text = Text.assemble((f"{self.display.request_id[:8]} ", "dim"), self.display.current_line())
        return Group(self.spinner)
