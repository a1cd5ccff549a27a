"""Small builders shared by the tests."""
from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from shared.config import Settings
from shared.jobs import decided_from_files, prepare_run
from shared.runstore import RunStore
from shared.sales import UploadRules, to_csv
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
    """Train on local files as `bookcast train --file` does: merged, snapshotted, run."""
    from shared.training.worker import execute

    series, _ = decided_from_files(sources, UploadRules(prefix=cfg.upload_prefix))
    correlation_id = f"test-{uuid.uuid4().hex[:8]}"
    cause = {"kind": "forced", "key": correlation_id, "forced": True}
    job = prepare_run(cfg, RunStore(cfg), {i: s for i, s in series.items() if not isbns or i in isbns}, cause,
                      correlation_id, "local")
    return job.run_id, execute(job.model_dump(mode="json"))


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
        self.hanging = False
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
            if self.hanging:  # accepted, never answered: a server that hangs
                self.connections.append(client)
                continue
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

    def hang(self) -> None:
        """The server stops answering: open connections drop, new ones wait forever."""
        self.hanging = True
        for connection in self.connections:
            try:
                connection.close()
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


class Inbox:
    """A Slack incoming-webhook stand-in and an SMTP server on loopback, recording what
    the monitor really sends over HTTP and SMTP."""

    def __init__(self):
        import json
        import socketserver
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.slack: list[dict] = []
        self.mail: list[str] = []
        inbox = self

        class Webhook(BaseHTTPRequestHandler):
            def do_POST(self):
                inbox.slack.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        class Smtp(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"220 inbox\r\n")
                while line := self.rfile.readline():
                    command = line.decode().strip().upper()
                    if command == "DATA":
                        self.wfile.write(b"354 go on\r\n")
                        body = []
                        while (data := self.rfile.readline()) not in (b".\r\n", b""):
                            body.append(data.decode())
                        inbox.mail.append("".join(body))
                        self.wfile.write(b"250 queued\r\n")
                    elif command == "QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"250 ok\r\n")

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
        self.smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Smtp)
        for server in (self.http, self.smtp):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.webhook_url = f"http://127.0.0.1:{self.http.server_address[1]}/hooks/bookcast"
        self.smtp_port = self.smtp.server_address[1]

    def close(self) -> None:
        for server in (self.http, self.smtp):
            server.shutdown()
            server.server_close()
