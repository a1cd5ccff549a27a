"""ZenML's local store, initialised by one process at a time.

Two training jobs starting together on a fresh machine both found no store and both
created it: one failed with ``EntityExistsError: ... component with name 'default'`` (or a
bogus migration error), and its run was lost. The first use of the store now happens under
an exclusive lock file beside ZenML's configuration directory; later jobs find it ready.
"""
from __future__ import annotations

import fcntl
import logging
from pathlib import Path


def ready() -> None:
    from zenml.client import Client
    from zenml.utils.io_utils import get_global_config_directory  # honours ZENML_CONFIG_PATH

    config = Path(get_global_config_directory())
    config.parent.mkdir(parents=True, exist_ok=True)
    with open(config.parent / f".{config.name}.init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        # A store created here has no active stack yet, so ZenML activates its default stack,
        # which is what we want, and warns that it did ("Setting the global active stack to
        # default."). Only that logger, and only while the store is made ready, is quieted.
        store_log = logging.getLogger("zenml.zen_stores.base_zen_store")
        level = store_log.level
        store_log.setLevel(logging.ERROR)
        try:
            Client().active_stack_model  # creates the store, its default stack and components
        finally:
            store_log.setLevel(level)
