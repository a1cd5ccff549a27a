"""Rollback moves the alias back (never copies), backs up first, verifies, audits, and is
idempotent per request id; the HTTP function is strict with its input."""
from __future__ import annotations

import pytest
import requests

from emulators.processes import free_port, stop
from shared import registry
from shared.forecasting import models
from shared.forecasting.models import ModelSpec
from shared.identity import LOCAL_ISSUER, Caller, mint_local_token
from shared.rollback import RollbackRequest, rollback
from shared.runstore import RunStore
from shared.training.per_isbn import serving_forecast
from tests.helpers import sample

pytestmark = pytest.mark.usefixtures("mlflow_server")
ISBN = "9780306406157"
ONCALL = Caller(email="oncall@example.org", subject="1234", issuer=LOCAL_ISSUER)


def register(cfg, store, gate: str, promote: bool) -> str:
    y = sample(1, years=2)["units"].to_numpy(float)
    fitted = models.fit(y, sample(1, years=2)["week"].iloc[0], ModelSpec(kind="seasonal_naive")).to_dict()
    tags = {"gate": gate, "quarantined": str(gate == "failed").lower(), "kind": "candidate"}
    version = registry.register(cfg, ISBN, fitted, serving_forecast(fitted), params={}, metrics={"mae": 1.0},
                                tags=tags).version
    if promote:
        registry.move_alias(cfg, store, ISBN, version, "promote", "test", "pytest", "cid")
    return version


@pytest.fixture
def history(cfg, probe):
    """v1 passed and served, v2 quarantined (never served), v3 passed and serves now."""
    store = RunStore(cfg)
    v1 = register(cfg, store, "passed", promote=True)
    v2 = register(cfg, store, "failed", promote=False)
    v3 = register(cfg, store, "passed", promote=True)
    return store, v1, v2, v3


def champion(cfg) -> str:
    return registry.version_by_alias(cfg, ISBN).version


def test_rollback_to_previous_backs_up_verifies_audits_and_replays(cfg, probe, history):
    store, v1, _, v3 = history
    request = RollbackRequest(isbns=[ISBN], to="previous", reason="bad forecasts after v3", actor="the CEO",
                              request_id="incident-42")
    result = rollback(cfg, request, ONCALL, store)
    assert result["ok"] and result["results"][0] == {"isbn": ISBN, "status": "rolled_back", "from_version": v3,
                                                     "to_version": v1, "detail": f"the champion before v{v3}"}
    assert champion(cfg) == v1
    assert store.get("alias_backups", result["backup_id"])["targets"] == {ISBN: v3}
    audit = store.get("audit", "incident-42")
    assert audit["actor"] == "oncall@example.org" and audit["note"] == "the CEO"  # who says is only a note
    assert audit["request"]["reason"] == "bad forecasts after v3"
    last_move = store.alias_history(ISBN)[-1]
    assert (last_move["action"], last_move["from_version"], last_move["to_version"]) == ("rollback", v3, v1)
    assert last_move["actor"] == "oncall@example.org"
    assert any(e["action"] == "rollback" for e in probe.messages("model-changes", at_least=3))
    replay = rollback(cfg, request, ONCALL, store)
    assert replay["replayed"] is True and champion(cfg) == v1


def test_quarantined_version_needs_explicit_consent(cfg, history):
    store, _, v2, v3 = history
    refused = rollback(cfg, RollbackRequest(isbns=[ISBN], to=v2, reason="try v2"), ONCALL, store)
    assert not refused["ok"] and "quarantined" in refused["results"][0]["detail"] and champion(cfg) == v3
    forced = rollback(cfg, RollbackRequest(isbns=[ISBN], to=v2, reason="try v2", allow_quarantined=True), ONCALL,
                      store)
    assert forced["ok"] and champion(cfg) == v2


def test_emergency_all_to_last_known_good(cfg, history):
    store, v1, v2, _ = history
    rollback(cfg, RollbackRequest(isbns=[ISBN], to=v2, reason="experiment", allow_quarantined=True),
             ONCALL, store)
    result = rollback(cfg, RollbackRequest(all=True, to="last_known_good", reason="emergency"), ONCALL, store)
    assert [r["isbn"] for r in result["results"]] == [ISBN]
    assert result["results"][0]["to_version"] == v1 and champion(cfg) == v1


BAD_REQUESTS = [
    ({"isbns": ["9780306406158"], "reason": "x" * 5}, "isbns"),
    ({"isbns": [ISBN], "to": "yesterday", "reason": "xxxx"}, "to"),
    ({"all": True, "to": "3", "reason": "xxxx"}, None),
    ({"reason": "xxxx"}, None),
    ({"isbns": [ISBN]}, "reason"),
    ({"isbns": [ISBN], "reason": "x" * 1_100_000}, "reason"),  # refused before anything moves
    ({"isbns": [ISBN], "reason": "xxxx", "actor": "y" * 5000}, "actor"),
]


@pytest.fixture
def rollback_url(cloud, cfg):
    """The rollback function for this test's project, trusting the stack's local signing key."""
    port = free_port()
    proc = cloud.start_function("rollback", project=cfg.project_id, port=port,
                                extra_env={"BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix,
                                           "BOOKCAST_IDENTITY__ALLOWED_CALLERS": '["domain:bookcast.local"]'})
    yield cloud.function_url("rollback", port)
    stop(proc)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_function_is_strict_with_input_and_rolls_back_over_http(cfg, history, rollback_url):
    _, v1, _, v3 = history
    url, signed = rollback_url, bearer(mint_local_token(cfg, rollback_url))
    for body, field in BAD_REQUESTS:
        response = requests.post(url, json=body, headers=signed, timeout=30)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and error["message"]
        assert field is None or error["field"] == field
    assert requests.post(url, data="{", headers={"Content-Type": "application/json", **signed}).status_code == 400
    assert requests.get(url, timeout=30).status_code == 405
    assert champion(cfg) == v3 and list(RunStore(cfg).stream("audit")) == []  # nothing moved or recorded
    response = requests.post(url, json={"isbns": [ISBN], "to": "previous", "reason": "via gcloud functions call",
                                        "actor": "somebody else"}, headers=signed, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["to_version"] == v1 and champion(cfg) == v1
    audit = RunStore(cfg).get("audit", response.json()["audit_id"])
    assert (audit["actor"], audit["actor_issuer"], audit["note"]) == ("operator@bookcast.local", LOCAL_ISSUER,
                                                                      "somebody else")


def test_function_refuses_and_audits_callers_without_a_valid_identity(cfg, history, rollback_url, tmp_path):
    _, _, _, v3 = history
    body = {"isbns": [ISBN], "to": "previous", "reason": "let me in", "actor": "admin"}
    elsewhere = cfg.model_copy(update={"identity": cfg.identity.model_copy(update={"local_keys_dir": str(tmp_path)})})
    refusals = [
        ({}, 401, "unauthenticated"),
        ({"Authorization": "Basic b3BzOm9wcw=="}, 401, "unauthenticated"),
        (bearer("not-a-jwt"), 403, "invalid_identity"),
        (bearer(mint_local_token(cfg, "http://127.0.0.1:1/other-function")), 403, "invalid_identity"),
        (bearer(mint_local_token(cfg, rollback_url, lifetime_seconds=-120)), 403, "invalid_identity"),  # expired
        (bearer(mint_local_token(elsewhere, rollback_url)), 403, "invalid_identity"),  # another key signed it
        (bearer(mint_local_token(cfg, rollback_url, email="intruder@example.org")), 403, "caller_not_allowed"),
    ]
    for headers, status, code in refusals:
        response = requests.post(rollback_url, json=body, headers=headers, timeout=30)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), headers
    assert champion(cfg) == v3
    audited = [a for a in RunStore(cfg).stream("audit")]
    assert sorted((a["kind"], a["status"], a["code"]) for a in audited) == \
        sorted(("refused", status, code) for _, status, code in refusals)
    assert all(a["route"] == "rollback" and a["note"] == "admin" and a["detail"] for a in audited)
