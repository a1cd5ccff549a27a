"""Cloud Storage access; against fake-gcs-server when STORAGE_EMULATOR_HOST is set."""
from __future__ import annotations

import os


def storage_client(project: str):
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client(project=project)


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://") or "/" not in uri[5:]:
        raise ValueError(f"not a gs://bucket/object URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    return bucket, name


def read_uri(uri: str, project: str | None = None) -> str:
    bucket, name = split_uri(uri)
    blob = storage_client(project or os.environ.get("BOOKCAST_PROJECT_ID", "")).bucket(bucket).blob(name)
    return blob.download_as_text()


def write_uri(uri: str, text: str, project: str) -> None:
    bucket, name = split_uri(uri)
    storage_client(project).bucket(bucket).blob(name).upload_from_string(text, content_type="application/json")
