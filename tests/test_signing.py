"""The event signing key: mounted in functions, read from Secret Manager by training jobs,
the development key only where neither is configured."""
from __future__ import annotations

import google.auth.exceptions
import pytest

from shared import signing
from shared.lifecycle import launch


@pytest.fixture(autouse=True)
def fresh_key_cache():
    signing.secret_manager_value.cache_clear()
    yield
    signing.secret_manager_value.cache_clear()


def test_a_mounted_key_wins_and_the_development_key_is_the_fallback(monkeypatch):
    monkeypatch.delenv(signing.SECRET_VARIABLE, raising=False)
    monkeypatch.delenv(signing.KEY_VARIABLE, raising=False)
    development = signing.signature("training.status", b"{}")
    assert signing.signing_key() == signing.LOCAL_KEY
    monkeypatch.setenv(signing.KEY_VARIABLE, "mounted-from-secret-manager")
    monkeypatch.setenv(signing.SECRET_VARIABLE, "projects/p/secrets/s/versions/latest")  # not read: the mount wins
    assert signing.signing_key() == "mounted-from-secret-manager"
    assert signing.signature("training.status", b"{}") != development


def test_a_job_given_the_secret_name_reads_it_or_fails_never_signing_with_another_key(monkeypatch, tmp_path):
    version = "projects/bookcast-prod/secrets/bookcast-event-signing-key/versions/latest"
    assert signing.secret_access_url(version) == f"https://secretmanager.googleapis.com/v1/{version}:access"
    monkeypatch.delenv(signing.KEY_VARIABLE, raising=False)
    monkeypatch.setenv(signing.SECRET_VARIABLE, version)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-credentials.json"))
    with pytest.raises(google.auth.exceptions.DefaultCredentialsError):
        signing.signature("training.status", b"{}")
    # Vertex jobs get the secret's name, never its value.
    assert signing.SECRET_VARIABLE in launch.FORWARDED_ENV and signing.KEY_VARIABLE not in launch.FORWARDED_ENV
