"""What the node tells its operator: one structured event per thing that happened.

Every event has a kind and fields. The human console renders it as one line (coloured by rich on a
terminal); the JSON console writes one object per line with the same fields, for log shippers.
Python `logging` records from any module are routed through the same sink, so `--log-format json`
makes all output JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from rich.console import Console as RichConsole
from rich.text import Text

LogFormat = Literal["human", "json"]

# How each event kind reads to a person; fields missing from an event render as "?".
MESSAGES: dict[str, str] = {
    "coordinator": "coordinator {url}: {mode}",
    "key_mismatch": "coordinator presents key {presented} but {pinned} is pinned: every job will be refused",
    "not_pinned": "coordinator key {presented} is not pinned; trusted for this run (pin it: horde-node init)",
    "unreachable": "coordinator unreachable ({error}); retrying in {delay:.1f}s",
    "reachable": "coordinator reachable again",
    "model_loading": "loading model {model} … {percent:.0f}%",
    "model_failed": "model {model} could not be loaded: {reason}",
    "models_ready": "serving {models} on {device} ({threads} CPU threads)",
    "spool_replay": "{count} finished result(s) in the spool from an earlier run; resubmitting",
    "idle": "no jobs for this node: {reasons}",
    "job_started": "job {job} · {model} · {width}×{height} · {steps} steps · {processing}",
    "job_step": "job {job} · step {step}/{total}",
    "job_done": "job {job} done in {seconds:.1f}s",
    "job_faulted": "job {job} faulted: {reason}",
    "job_refused": "REFUSED job {job}: {reason}",
    "submitted": "job {job} delivered: +{kudos:.2f} kudos{held_note} ({kudos_per_hour:.1f}/h) · {done} ok, "
    "{faulted} faulted",
    "settled": "job {job} was already settled by the coordinator ({rc})",
    "rejected": "job {job}: the coordinator rejected the result ({error}); kept in {where}",
    "paused": "pausing pops for {seconds:.0f}s: {reason}",
    "maintenance": "no jobs: the coordinator has this node in maintenance · {reason} · asking again in {seconds:.0f}s",
    "maintenance_over": "out of maintenance after {minutes:.0f} min: popping again",
    "resumed": "popping again",
    "stopping": "stopping: {reason}",
    "stopped": "stopped · {done} done, {faulted} faulted, {kudos:.2f} kudos · {pending} left in the spool",
    "log": "{message}",
}

_STYLES = {logging.DEBUG: "dim", logging.INFO: "", logging.WARNING: "yellow", logging.ERROR: "bold red"}


class Console:
    """Thread-safe event sink. `level` filters events (logging levels: INFO by default)."""

    def __init__(
        self, stream: TextIO | None = None, log_format: LogFormat = "human", level: int = logging.INFO
    ) -> None:
        self.stream = stream or sys.stderr
        self.log_format = log_format
        self.level = level
        self._lock = threading.Lock()
        self._rich = RichConsole(file=self.stream, highlight=False, markup=False, soft_wrap=True)

    def event(self, kind: str, level: int = logging.INFO, /, **fields: Any) -> None:
        if level < self.level:
            return
        message = render(kind, fields)
        with self._lock:
            if self.log_format == "json":
                self._write_json(kind, level, message, fields)
            else:
                self._write_human(level, message)

    def _write_json(self, kind: str, level: int, message: str, fields: dict[str, Any]) -> None:
        record = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": logging.getLevelName(level).lower(),
            "event": kind,
            "message": message,
            **fields,
        }
        self.stream.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        self.stream.flush()

    def _write_human(self, level: int, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        style = _STYLES.get(level, "")
        self._rich.print(Text(f"{stamp} {message}", style=style))


def render(kind: str, fields: dict[str, Any]) -> str:
    template = MESSAGES.get(kind)
    if template is None:
        details = " ".join(f"{key}={value}" for key, value in fields.items())
        return f"{kind} {details}".strip()
    try:
        return template.format_map(_Lenient(fields))
    except (ValueError, TypeError):
        # A field of an unexpected type must never take the daemon down over a log line.
        return f"{kind} {fields}"


class _Lenient(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        return _Missing()


class _Missing:
    def __format__(self, spec: str) -> str:
        return "?"


class ConsoleHandler(logging.Handler):
    """Routes `logging` records into the console, so library warnings share its format."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self.format(record).split("\n", 1)[-1]
            self.console.event("log", record.levelno, message=message, logger=record.name)
        except Exception:
            self.handleError(record)


def setup_logging(console: Console, verbosity: int) -> None:
    """Quiet by default: only warnings from libraries; -v shows info, -vv debug."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, ConsoleHandler):
            root.removeHandler(handler)
    root.addHandler(ConsoleHandler(console))
    root.setLevel(level)


def quiet_libraries() -> None:
    """Keep library chatter that a volunteer cannot act on off the console (-vv brings it back).

    transformers and diffusers print through their own handlers (e.g. "requires torchvision ... falling
    back"), and torch warns about dtypes and precision; the job lines are what matters here.
    """
    import warnings

    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_progress_bar()  # its bars would interleave with the console's own progress lines
        library.set_verbosity_error()
    for module in ("torch", "diffusers", "transformers", "accelerate"):
        warnings.filterwarnings("ignore", category=UserWarning, module=rf"{module}(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{module}(\.|$)")
