"""Fail fast, by name, when a service the command needs is not answering.

Google's clients retry an unreachable endpoint for minutes (Firestore's default retry runs
up to 60 s per call, Pub/Sub's publish up to 600 s), so a CLI command against a stopped
local cloud would hang. Before a command touches a service, its host:port is probed with
a short TCP connect: a closed port answers at once, a silent host within ``timeout``.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.config import Settings

PROBE_TIMEOUT_SECONDS = 2.0
START_HINT = 'run `make up` (or `eval "$(make -s env)"` if the local cloud runs with other ports)'


class Unreachable(RuntimeError):
    """A service a command needs does not accept connections; the message names it and the fix."""


@dataclass(frozen=True)
class Service:
    name: str       # as people know it: "Firestore emulator"
    address: str    # host:port
    fix: str


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def services(cfg: Settings) -> dict[str, Service | None]:
    """Each service key with where it is reached, or None when nothing local is configured
    (the real Google API: the client's own deadlines apply)."""
    def emulator(variable: str, name: str) -> Service | None:
        value = os.environ.get(variable)
        return Service(f"{name} emulator", value.removeprefix("http://").rstrip("/"), START_HINT) if value else None

    tracking = urlsplit(cfg.mlflow_tracking_uri)
    mlflow = Service("MLflow server", tracking.netloc, f"{START_HINT}, or set BOOKCAST_MLFLOW_TRACKING_URI") \
        if tracking.scheme in ("http", "https") else None
    return {"firestore": emulator("FIRESTORE_EMULATOR_HOST", "Firestore"),
            "pubsub": emulator("PUBSUB_EMULATOR_HOST", "Pub/Sub"),
            "gcs": emulator("STORAGE_EMULATOR_HOST", "GCS"),
            "mlflow": mlflow}


def probe(service: Service, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    host, port = _host_port(service.address, 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error)).lower()
        raise Unreachable(f"{service.name} at {service.address} is not answering ({reason}): {service.fix}") from None


def require(cfg: Settings, *keys: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Raise Unreachable for the first of ``keys`` (firestore, pubsub, gcs, mlflow) that is
    configured locally and does not answer."""
    known = services(cfg)
    for key in keys:
        service = known[key]
        if service is not None:
            probe(service, timeout)
