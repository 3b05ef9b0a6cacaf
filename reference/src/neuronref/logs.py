"""Logging to standard error: one JSON object per line, or a human-readable console line.

Standard error only: for neurondb-mcp, standard output carries the protocol, and
the same rule everywhere keeps journald's view identical for every service.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
LEVELS |= {"warning": logging.WARNING, "error": logging.ERROR}
LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}
LEVEL_NAMES |= {logging.ERROR: "error", logging.CRITICAL: "fatal"}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _timestamp(record),
            "level": LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "service": self.service,
            "msg": record.getMessage(),
        }
        document |= _fields(record)
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        level = LEVEL_NAMES.get(record.levelno, record.levelname.lower()).upper()
        line = f"{_timestamp(record)} {level:5} {self.service}: {record.getMessage()}"
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def setup(service: str, level: str, fmt: str, stream: TextIO | None = None) -> logging.Logger:
    """Configure the root logger of the process (level and format already validated)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else ConsoleFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # psycopg logs connection attempts at INFO in some versions: only its warnings matter here.
    logging.getLogger("psycopg").setLevel(max(LEVELS[level], logging.WARNING))
    return logging.getLogger(service)


def fields(**values: Any) -> dict[str, Any]:
    """extra= for a log call: structured fields (keys of the JSON line, key=value on the console)."""
    return {"fields": values}


def early_error(service: str, message: str, raw_format: str | None) -> None:
    """An error before logging is configured (a bad setting): still in the format asked for, if any."""
    fmt = "console" if (raw_format or "").strip().lower() == "console" else "json"
    record = logging.LogRecord(service, logging.ERROR, "", 0, message, None, None)
    formatter = JsonFormatter(service) if fmt == "json" else ConsoleFormatter(service)
    print(formatter.format(record), file=sys.stderr, flush=True)
