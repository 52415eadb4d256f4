"""Structured, quiet-by-default logging: `key=value` lines for people, JSON lines for machines."""

import json
import logging
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError

STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class StructuredFormatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: value for key, value in vars(record).items() if key not in STANDARD}
        event = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **fields,
        }
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        if self.as_json:
            return json.dumps(event, default=str)
        extra = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{event['time']} {event['level']:<7} {record.getMessage()} {extra}".rstrip()
        # The traceback on the lines below, as Python prints it: a failure without one cannot be diagnosed.
        return "\n".join([line, *(event[key] for key in ("error", "stack") if key in event)])


# Libraries whose records come out in our format too: asyncpg reports the pool's reconnection
# attempts while PostgreSQL is away (storage/postgres.py shortens them to one line); aiohttp reports
# failures outside any handler (a connection's protocol errors) and asyncio a task's exception nobody
# awaited, with their tracebacks.
LIBRARIES = ("asyncpg", "aiohttp", "asyncio")


class ClientProtocolErrors(logging.Filter):
    """aiohttp logs each malformed HTTP message it answers 400 to as an ERROR with a traceback. That is the
    client's mistake, not ours, and on an open network a flood of them would fill the log: one line at INFO
    (shown from --log-level info), without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not (isinstance(error, HttpProcessingError) and 400 <= (error.code or 500) < 500):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.INFO):
            return False
        # Only the first line of aiohttp's message: the lines after it quote the client's bytes.
        reason = str(error.message).split("\n", 1)[0]
        record.msg, record.args = f"{record.getMessage()}: {error.code} {reason}", ()
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging(level: str = "warning", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(as_json))
    handler.addFilter(ClientProtocolErrors())
    for name in ("horde", *LIBRARIES):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())  # warnings and worse unless asked: quiet by default
        logger.propagate = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
