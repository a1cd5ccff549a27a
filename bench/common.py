"""What every benchmark needs: a private local cloud and settings pointing at it."""
from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from emulators.stack import Ports, Stack


def private_stack(profile: str = "test") -> Stack:
    """A stack on free ports with its own state and project, so a benchmark never
    disturbs a running `make up`, nor outlives one stopped with SIGTERM."""
    signal.signal(signal.SIGTERM, _stop_everything)
    state = Path(tempfile.mkdtemp(prefix="bookcast-bench-"))
    return Stack(state, project=f"bench-{uuid.uuid4().hex[:8]}", ports=Ports.free(), profile=profile)


def _stop_everything(signum, _frame) -> None:
    """SIGTERM (a timeout, a CI cancel): every process the benchmark started, directly or
    not, is stopped, then the benchmark exits. Unwinding instead (an exception raised here)
    deadlocked a benchmark inside a thread pool's shutdown, its stack left running."""
    import psutil

    started = psutil.Process().children(recursive=True)
    for process in started:
        process.terminate()
    for process in psutil.wait_procs(started, timeout=10)[1]:
        process.kill()
    os._exit(128 + signum)


def stop_stack(stack: Stack, started: list) -> None:
    """Shard workers first (while Firestore still records their end), then the processes
    in reverse order of starting."""
    from emulators.processes import stop, stop_workers

    stop_workers(stack.state_dir)
    for proc in reversed(started):
        stop(proc)


def bench_settings(stack: Stack, **overrides):
    """Settings of the stack's profile, pointing at it."""
    from shared.config import load_settings

    os.environ.update(stack.client_env())
    return load_settings(stack.profile).model_copy(update={
        "project_id": stack.project, "state_dir": str(stack.state_dir),
        "mlflow_tracking_uri": f"http://127.0.0.1:{stack.ports.mlflow}", **overrides})


@contextmanager
def trigger_stack(profile: str = "test", vertex_dry_run: bool = False):
    """A private stack with MLflow, GCS and the trigger-training function wired to its
    uploads; yields (stack, settings) and stops everything after. With ``vertex_dry_run``
    the function plans Vertex AI jobs instead of training."""
    from emulators.wiring import wire

    stack = private_stack(profile)
    launcher = {"BOOKCAST_LAUNCHER": "vertex", "BOOKCAST_VERTEX__DRY_RUN": "true"} if vertex_dry_run else {}
    started = []
    try:
        for start in (stack.start_pubsub, stack.start_firestore, stack.start_mlflow):
            started.append(start())
        cfg = bench_settings(stack, **({"launcher": "vertex"} if vertex_dry_run else {}))
        started.append(stack.start_gcs(backend="memory"))
        wire(stack.topology, stack.project, stack.ports, only_functions={"trigger-training"})
        started.append(stack.start_function("trigger-training", extra_env=launcher))
        yield stack, cfg
    finally:
        stop_stack(stack, started)


def wait_accepted(store, correlation_id: str, timeout: float) -> dict:
    """The cause an upload made, once its decisions are taken (the run it launched, if any)."""
    from shared.layout import Collection
    from shared.states import CauseStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        causes = [c for c in store.stream(Collection.CAUSES) if c.get("correlation_id") == correlation_id]
        if causes and causes[0]["status"] != CauseStatus.DECIDING:
            return causes[0]
        time.sleep(0.2)
    raise TimeoutError(f"no decision for {correlation_id} within {timeout:.0f} s")
