"""Fail fast, by name, when a service the command needs is not answering.

Google's clients retry an unreachable endpoint for minutes (Firestore's default retry runs
up to 60 s per call, Pub/Sub's publish up to 600 s), so a CLI command against a stopped
local cloud would hang. Before a command touches a service, it is asked for any HTTP answer
with a short timeout (every emulator and MLflow answer plain HTTP): a closed port fails at
once, a server that accepts but does not answer (stopped, overloaded) within ``timeout``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.config import Settings

PROBE_TIMEOUT_SECONDS = 2.0
START_HINT = 'run `make up` (or `eval "$(make -s env)"` if the local cloud runs with other ports)'


class Unreachable(RuntimeError):
    """A service a command needs does not answer; the message names it and the fix."""


@dataclass(frozen=True)
class Service:
    name: str       # as people know it: "Firestore emulator"
    address: str    # host:port
    fix: str
    url: str        # a cheap request it answers


def services(cfg: Settings) -> dict[str, Service | None]:
    """Each service key with where it is reached, or None when nothing local is configured
    (the real Google API: the client's own deadlines apply)."""
    def emulator(variable: str, name: str, path: str = "/") -> Service | None:
        value = os.environ.get(variable)
        if not value:
            return None
        address = value.removeprefix("http://").rstrip("/")
        return Service(f"{name} emulator", address, START_HINT, f"http://{address}{path}")

    tracking = urlsplit(cfg.mlflow_tracking_uri)
    mlflow = Service("MLflow server", tracking.netloc, f"{START_HINT}, or set BOOKCAST_MLFLOW_TRACKING_URI",
                     f"{cfg.mlflow_tracking_uri.rstrip('/')}/health") if tracking.scheme in ("http", "https") else None
    return {"firestore": emulator("FIRESTORE_EMULATOR_HOST", "Firestore"),
            "pubsub": emulator("PUBSUB_EMULATOR_HOST", "Pub/Sub"),
            "gcs": emulator("STORAGE_EMULATOR_HOST", "GCS", "/storage/v1/b"),
            "mlflow": mlflow}


def probe(service: Service, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Any HTTP answer (whatever its status) means the server is there."""
    import requests

    session = requests.Session()
    session.trust_env = False  # the emulators are reached directly, as the Google clients reach them
    try:
        session.get(service.url, timeout=timeout)
    except requests.RequestException as error:
        reason = "no answer within {:g} s".format(timeout) if isinstance(error, requests.Timeout) else \
            "connection refused" if "refused" in str(error).lower() else type(error).__name__
        raise Unreachable(f"{service.name} at {service.address} is not answering ({reason}): {service.fix}") from None


def require(cfg: Settings, *keys: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Raise Unreachable for the first of ``keys`` (firestore, pubsub, gcs, mlflow) that is
    configured locally and does not answer."""
    known = services(cfg)
    for key in keys:
        service = known[key]
        if service is not None:
            probe(service, timeout)
