"""JSON logs in Cloud Logging's structured format, with the correlation id of the upload.

Cloud Functions forwards one JSON object per stdout line to Cloud Logging; ``severity`` and
``message`` are recognised, and ``logging.googleapis.com/labels`` becomes searchable labels,
so one correlation id finds an upload's every step across functions and workers.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, Iterator

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class CloudLoggingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARNING" else "WARNING",
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "logger": record.name,
        }
        cid = getattr(record, "correlation_id", None) or correlation_id.get()
        if cid:
            entry["correlation_id"] = cid
            entry["logging.googleapis.com/labels"] = {"correlation_id": cid}
        for key, value in vars(record).items():
            if key not in _RESERVED and key != "correlation_id":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", stream=None) -> None:
    """Idempotent: functions call it at import, workers at start. Logs go to stdout (what
    Cloud Functions forwards to Cloud Logging) unless ``stream`` says otherwise: the CLI
    keeps stdout for its output."""
    # Libraries that print or configure their own handlers would break one-JSON-object-per-line.
    for key, value in (("MLFLOW_CONFIGURE_LOGGING", "false"), ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
                       ("ZENML_LOGGING_VERBOSITY", "WARN"), ("ZENML_ENABLE_RICH_TRACEBACK", "false"),
                       ("ZENML_ANALYTICS_OPT_IN", "false"), ("ZENML_CAPTURE_PRINTS", "false")):
        os.environ.setdefault(key, value)
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    handler.setLevel(level)  # ZenML names some loggers by file path: filter at the handler
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "google", "grpc", "mlflow", "alembic", "optuna", "zenml", "werkzeug", "matplotlib", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def correlated(cid: str | None) -> Iterator[None]:
    token = correlation_id.set(cid)
    try:
        yield
    finally:
        correlation_id.reset(token)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
