"""Cloud Storage access; against fake-gcs-server when STORAGE_EMULATOR_HOST is set."""
from __future__ import annotations

import os


def storage_client(project: str):
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client(project=project)
