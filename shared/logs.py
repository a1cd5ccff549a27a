"""JSON logs in Cloud Logging's structured format, with the correlation id of the upload.

Cloud Functions forwards one JSON object per stdout line to Cloud Logging; ``severity`` and
``message`` are recognised, and ``logging.googleapis.com/labels`` becomes searchable labels,
so one correlation id finds an upload's every step across functions and workers.

Also recognised: ``logging.googleapis.com/sourceLocation`` (file, line, function of the
call), ``logging.googleapis.com/trace`` / ``spanId`` from an HTTP request's ``traceparent``
or ``X-Cloud-Trace-Context`` header (Cloud Logging then groups a request's lines under its
trace), and ``httpRequest`` on the one line an HTTP function writes per request
(``configure(http=True)``). ``labelled(audit_id=...)`` puts fields on every line inside it,
and on the request's own line.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any, Iterator

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_labels: contextvars.ContextVar[dict] = contextvars.ContextVar("log_labels", default={})
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CLOUD_TRACE_CONTEXT = re.compile(r"^([0-9a-fA-F]{32})(?:/(\d+))?(?:;o=([01]))?")

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _request():
    """The Flask request being handled, if any (without importing Flask into the CLI)."""
    flask = sys.modules.get("flask")
    return flask.request if flask is not None and flask.has_request_context() else None


def trace_fields(headers, project: str | None) -> dict[str, Any]:
    """Cloud Logging's trace fields from a W3C ``traceparent`` or Google's
    ``X-Cloud-Trace-Context: TRACE/SPAN;o=1`` (its span id is decimal; Logging wants hex)."""
    if match := TRACEPARENT.match(headers.get("traceparent", "").strip()):
        trace, span, sampled = match[1], match[2], int(match[3], 16) & 1 == 1
    elif match := CLOUD_TRACE_CONTEXT.match(headers.get("X-Cloud-Trace-Context", "").strip()):
        trace, span, sampled = match[1].lower(), f"{int(match[2]):016x}" if match[2] else None, match[3] == "1"
    else:
        return {}
    fields = {"logging.googleapis.com/trace": f"projects/{project or '-'}/traces/{trace}",
              "logging.googleapis.com/trace_sampled": sampled}
    if span:
        fields["logging.googleapis.com/spanId"] = span
    return fields


class CloudLoggingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARNING" else "WARNING",
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {"file": record.pathname, "line": str(record.lineno),
                                                      "function": record.funcName},
        }
        request = _request()
        labels = _labels.get()
        if request is not None:
            entry.update(trace_fields(request.headers, os.environ.get("GOOGLE_CLOUD_PROJECT")))
            labels = {**getattr(_flask_g(), "log_labels", {}), **labels}
        cid = getattr(record, "correlation_id", None) or correlation_id.get() or labels.get("correlation_id")
        entry.update({k: v for k, v in labels.items() if k != "correlation_id"})
        if cid:
            entry["correlation_id"] = cid
            entry["logging.googleapis.com/labels"] = {"correlation_id": cid}
        for key, value in vars(record).items():
            if key not in _RESERVED and key != "correlation_id":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ReadableFormatter(logging.Formatter):
    """For a person at a terminal (the CLI's stderr): time, severity, message and correlation
    id on one line; machines (Cloud Logging, pipes) get the JSON."""

    def format(self, record: logging.LogRecord) -> str:
        cid = getattr(record, "correlation_id", None) or correlation_id.get() or _labels.get().get("correlation_id")
        text = (f"{datetime.fromtimestamp(record.created):%H:%M:%S} {record.levelname:<7} {record.getMessage()}"
                + (f" ({cid})" if cid else ""))
        return f"{text}\n{self.formatException(record.exc_info)}" if record.exc_info else text


def configure(level: str = "INFO", stream=None, http: bool = False, readable: bool = False) -> None:
    """Idempotent: functions call it at import, workers at start. Logs go to stdout (what
    Cloud Functions forwards to Cloud Logging) unless ``stream`` says otherwise: the CLI
    keeps stdout for its output. ``http``: an HTTP function, which logs each request;
    ``readable``: plain lines for a person (ReadableFormatter) instead of JSON."""
    # Libraries that print or configure their own handlers would break one-JSON-object-per-line.
    for key, value in (("MLFLOW_CONFIGURE_LOGGING", "false"), ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
                       ("ZENML_LOGGING_VERBOSITY", "WARN"), ("ZENML_ENABLE_RICH_TRACEBACK", "false"),
                       ("ZENML_ANALYTICS_OPT_IN", "false"), ("ZENML_CAPTURE_PRINTS", "false")):
        os.environ.setdefault(key, value)
    root = logging.getLogger()
    if any(isinstance(h.formatter, (CloudLoggingFormatter, ReadableFormatter)) for h in root.handlers):
        return
    if http:
        log_http_requests()
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(ReadableFormatter() if readable else CloudLoggingFormatter())
    handler.setLevel(level)  # ZenML names some loggers by file path: filter at the handler
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "google", "grpc", "mlflow", "alembic", "optuna", "zenml", "werkzeug", "matplotlib", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _flask_g():
    return sys.modules["flask"].g


@contextlib.contextmanager
def labelled(**fields: str) -> Iterator[None]:
    """Every line logged inside carries ``fields`` (a rollback's ``audit_id``, say); inside an
    HTTP request they also stay on the request's own line, written when it ends."""
    token = _labels.set({**_labels.get(), **fields})
    if _request() is not None:
        _flask_g().log_labels = {**getattr(_flask_g(), "log_labels", {}), **fields}
    try:
        yield
    finally:
        _labels.reset(token)


def log_http_requests() -> None:
    """One line per HTTP request, with Cloud Logging's ``httpRequest`` (method, URL, status,
    latency, ...), through Flask's signals: what Cloud Run's request log holds, in our log."""
    import flask

    log = logging.getLogger("http")

    def started(sender, **extra) -> None:
        flask.g.log_started = time.perf_counter()

    def finished(sender, response, **extra) -> None:
        request = flask.request
        latency = time.perf_counter() - getattr(flask.g, "log_started", time.perf_counter())
        log.info("%s %s %s", request.method, request.full_path.rstrip("?"), response.status_code, extra={
            "httpRequest": {"requestMethod": request.method, "requestUrl": request.url, "status": response.status_code,
                            "responseSize": str(response.calculate_content_length() or 0),
                            "userAgent": request.user_agent.string, "remoteIp": request.remote_addr,
                            "protocol": request.environ.get("SERVER_PROTOCOL"), "latency": f"{latency:.6f}s"}})

    flask.request_started.connect(started, weak=False)
    flask.request_finished.connect(finished, weak=False)


@contextlib.contextmanager
def correlated(cid: str | None) -> Iterator[None]:
    token = correlation_id.set(cid)
    try:
        yield
    finally:
        correlation_id.reset(token)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
