"""Structured, quiet-by-default logging: `key=value` lines for people, JSON lines for machines."""

import json
import logging
import sys
import time

STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class StructuredFormatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: value for key, value in vars(record).items() if key not in STANDARD}
        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(), **fields}
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps(event, default=str)
        extra = " ".join(f"{key}={value}" for key, value in fields.items())
        return f"{event['time']} {event['level']:<7} {record.getMessage()} {extra}".rstrip()


# Libraries whose records come out in our format too: asyncpg reports the pool's reconnection
# attempts while PostgreSQL is away (storage/postgres.py shortens them to one line).
LIBRARIES = ("asyncpg",)


def configure_logging(level: str = "warning", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(as_json))
    for name in ("horde", *LIBRARIES):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())  # warnings and worse unless asked: quiet by default
        logger.propagate = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
