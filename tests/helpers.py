"""Small builders shared by the tests."""
from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from shared.config import Settings
from shared.launch import training_request
from shared.runstore import RunStore
from shared.sales import to_csv
from shared.sample_data import generate

END = date(2026, 11, 23)


def sample(n_isbns: int, years: float = 3, seed: int = 11) -> pd.DataFrame:
    return generate(n_isbns, years, end=END, seed=seed)


def short_series(isbn: str, weeks: int) -> pd.DataFrame:
    last = END - timedelta(days=END.weekday() + 7)
    return pd.DataFrame({"isbn": isbn, "week": [last - timedelta(weeks=weeks - 1 - i) for i in range(weeks)],
                         "units": np.random.default_rng(1).integers(5, 50, weeks)})


def write_csv(frame: pd.DataFrame, directory: Path, name: str = "sales.csv") -> str:
    path = directory / name
    path.write_bytes(to_csv(frame))
    return str(path)


def run_training(cfg: Settings, sources: list[str], isbns: list[str] | None = None) -> tuple[str, dict]:
    from shared.training.worker import execute

    store = RunStore(cfg)
    correlation_id = f"test-{uuid.uuid4().hex[:8]}"
    cause = {"kind": "forced", "key": correlation_id, "forced": True}
    run_id = store.create_run(isbns or [], cause, correlation_id, "local")
    return run_id, execute(training_request(cfg, run_id, isbns or [], sources, correlation_id, cause, "local"))


class TcpRelay:
    """A TCP relay in front of a server, which a test can cut to simulate an outage of
    that server without touching the server itself."""

    def __init__(self, target_port: int):
        import socket
        import threading

        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.connections: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.open = False
        self.listener.close()
        for connection in self.connections:
            try:
                connection.close()
            except OSError:
                pass
