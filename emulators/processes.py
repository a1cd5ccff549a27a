"""Starting, health-checking and stopping the local cloud's server processes.

Each server runs in its own session (process group): stopping the ``gcloud`` wrapper alone
leaves its Java emulator running, so ``down`` signals the whole group.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import requests


class StartupError(RuntimeError):
    """A component could not start; the message says why and where its log is."""


@dataclass
class Process:
    name: str
    pid: int
    port: int
    log: str
    command: list[str]

    def alive(self) -> bool:
        try:  # reap our own exited child, else its zombie would look alive
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(name: str, command: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None,
          cwd: str | None = None) -> Process:
    if port and not port_free(port):
        raise StartupError(
            f"{name}: port {port} is already in use. Stop whatever holds it (`ss -ltnp 'sport = :{port}'`) "
            f"or choose another port (see README, 'Ports')."
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    return Process(name=name, pid=proc.pid, port=port, log=str(log), command=command)


def wait_healthy(process: Process, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise StartupError(f"{process.name} exited during start-up. Last lines of {process.log}:\n{tail(process.log)}")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop(process)
    raise StartupError(f"{process.name} was not healthy after {timeout:.0f}s. Last lines of {process.log}:\n{tail(process.log)}")


def http_ok(url: str, accept: Callable[[requests.Response], bool] = lambda r: r.ok) -> Callable[[], bool]:
    return lambda: accept(requests.get(url, timeout=2))


def stop(process: Process, grace: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process.alive():
            time.sleep(0.1)
        if not process.alive():
            return


def stop_workers(state_dir: Path) -> list[str]:
    """Stop the local training jobs still registered (shared.lifecycle.launch.worker_file): each gets
    SIGTERM, marks its run cancelled and releases its leases, while Firestore is still up."""
    stopped = []
    for registered in sorted((Path(state_dir) / "workers").glob("*.json")):
        worker = json.loads(registered.read_text())
        stop(Process(name=f"worker {worker['run_id']}", pid=worker["pid"], port=0, log=worker["log"], command=[]),
             grace=30.0)
        registered.unlink(missing_ok=True)
        stopped.append(worker["run_id"])
    return sorted(set(stopped))  # a run's shards each have a worker


class Registry:
    """The state file that lets `down` and `status` find what `up` started."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "processes.json"

    def load(self) -> dict[str, Process]:
        if not self.path.exists():
            return {}
        return {name: Process(**p) for name, p in json.loads(self.path.read_text()).items()}

    def save(self, processes: dict[str, Process]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({n: asdict(p) for n, p in processes.items()}, indent=2))
