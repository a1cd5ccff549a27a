"""What every benchmark needs: a private local cloud and settings pointing at it."""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from emulators.stack import Ports, Stack


def private_stack(profile: str = "test") -> Stack:
    """A stack on free ports with its own state and project, so a benchmark never
    disturbs a running `make up`."""
    state = Path(tempfile.mkdtemp(prefix="bookcast-bench-"))
    return Stack(state, project=f"bench-{uuid.uuid4().hex[:8]}", ports=Ports.free(), profile=profile)


def bench_settings(stack: Stack, **overrides):
    """Settings of the stack's profile, pointing at it."""
    from shared.config import load_settings

    os.environ.update(stack.client_env())
    return load_settings(stack.profile).model_copy(update={
        "project_id": stack.project, "state_dir": str(stack.state_dir),
        "mlflow_tracking_uri": f"http://127.0.0.1:{stack.ports.mlflow}", **overrides})
