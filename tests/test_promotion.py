"""Safe promotion against the real emulators and MLflow: a risky candidate goes on trial as
challenger, is shadow-scored on the weeks uploaded after it and promoted or retired; canary
serving is deterministic per caller and says what served; an approval round-trips, audited."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests

from emulators.processes import free_port, stop
from shared import model_store, promotion, registry
from shared.forecasting import models
from shared.forecasting.models import ModelSpec
from shared.gcs import storage_client
from shared.identity import LOCAL_ISSUER, Caller, mint_local_token
from shared.registry import CHALLENGER
from shared.rollback import RollbackRequest, rollback
from shared.runstore import RunStore
from shared.layout import Collection
from shared.states import ApprovalStatus, TrialStatus
from shared.layout import Collection
from shared.sales import series_hash, weeks_of
from shared.serving import in_canary
from shared.training.per_isbn import serving_forecast
from shared.trigger import handle
from tests.helpers import run_training, sample, write_csv
from tests.test_trigger import notifications, upload

pytestmark = pytest.mark.usefixtures("mlflow_server")


def register_fitted(cfg, store, isbn: str, frame, kind: str, alias: str | None, scale: float = 1.0,
                    baseline: bool = False, data_hash: str | None = None) -> str:
    """A version of ``kind`` fitted on the frame's units (times ``scale``), moved to ``alias``."""
    fitted = models.fit(frame["units"].to_numpy(float) * scale, frame["week"].iloc[0], ModelSpec(kind=kind)).to_dict()
    tags = {"kind": "baseline" if baseline else "candidate", "family": kind, "spec": json.dumps({"kind": kind}),
            "gate": "passed", "quarantined": "false", "data_hash": data_hash or series_hash(weeks_of(frame)),
            "baseline": str(baseline).lower()}
    version = registry.register(cfg, isbn, fitted, serving_forecast(fitted), params={"family": kind},
                                metrics={"mae": 10.0}, tags=tags).version
    if alias:
        registry.move_alias(cfg, store, isbn, version, "promote", "test setup", "pytest", "cid-setup", alias=alias)
    return version


def bookcast(cfg, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BOOKCAST_PROJECT_ID": cfg.project_id, "BOOKCAST_PROFILE": "test",
           "BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix, "BOOKCAST_MLFLOW_TRACKING_URI": cfg.mlflow_tracking_uri}
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def served_version(cfg, isbn: str, alias: str | None = None) -> str | None:
    return getattr(registry.version_by_alias(cfg, isbn, alias), "version", None)


def deliver(cfg, probe, name: str, frame) -> None:
    upload(cfg, name, frame)
    (message,) = notifications(probe, 1)
    assert handle(cfg, message).status == "accepted"


def test_risky_candidates_go_on_trial_and_are_promoted_or_retired_by_their_scores_on_new_weeks(cfg, probe,
                                                                                             project_gcs, tmp_path):
    cfg = cfg.model_copy(update={
        "launcher": "vertex",  # decisions and runs are real; their training is a dry run
        "gates": cfg.gates.model_copy(update={"max_relative_mae": 100.0, "max_wape": 100.0, "champion_margin": 100.0}),
        "promotion": cfg.promotion.model_copy(update={"weeks_to_decide": 2})})
    store = RunStore(cfg)
    storage_client(cfg.project_id).create_bucket(cfg.data_bucket)
    frame = sample(2, years=2.5, seed=61)
    winner, loser = sorted(frame["isbn"].unique())
    cut = frame["week"].max() - timedelta(weeks=3)
    history, future = frame[frame["week"] <= cut], frame[frame["week"] > cut].copy()
    champions = {}
    for isbn in (winner, loser):  # a theta champion that was just rolled back to: any candidate is risky
        own = history[history["isbn"] == isbn]
        behind = "0" * 64 if isbn == loser else None  # fitted on other data: re-estimated while it serves on
        champions[isbn] = register_fitted(cfg, store, isbn, own, "theta", "champion", data_hash=behind)
        register_fitted(cfg, store, isbn, own, "theta", "champion", scale=1.2)
    rollback(cfg, RollbackRequest(isbns=[winner, loser], to="previous", reason="too high"),
             Caller("oncall@bookcast.local", "oncall", LOCAL_ISSUER), store)

    _, run = run_training(cfg, [write_csv(history, tmp_path)])
    results = {r["isbn"]: r for r in run["results"]}
    assert {r["status"] for r in results.values()} == {"challenger"}, results
    assert all("the ISBN was rolled back" in r["reason"] for r in results.values())
    challengers = {i: results[i]["version"] for i in results}
    refit = registry.version_by_alias(cfg, loser)
    assert refit.tags["kind"] == "refit" and refit.tags["refreshes"] == champions[loser]
    assert f"champion v{champions[loser]} re-estimated" in results[loser]["reason"]
    champions[loser] = refit.version  # no retraining loop on the next decision for its data
    for isbn in (winner, loser):
        assert served_version(cfg, isbn) == champions[isbn] and served_version(cfg, isbn, CHALLENGER) == challengers[isbn]
        assert [m["to_version"] for m in store.alias_history(isbn) if m["action"] == "challenge"] == [challengers[isbn]]
    assert (CHALLENGER, "challenge") in {(e["alias"], e["action"]) for e in probe.messages("model-changes", at_least=8)}

    # The winner's new weeks are what its challenger forecast; the loser's, its champion's.
    trial = store.get(Collection.CHALLENGES, loser)
    challenger_means = promotion.weekly_means(
        model_store.serving_forecast(cfg, registry.version_by_alias(cfg, winner, CHALLENGER).run_id))
    champion_means = json.loads(trial["champion_forecast"])
    means = {winner: challenger_means, loser: champion_means}
    future["units"] = [max(0, round(means[i][str(w)])) for i, w in zip(future["isbn"], future["week"])]

    deliver(cfg, probe, "history.csv", history)  # nothing after the trials' data: nothing scored
    assert list(store.col(Collection.SHADOW_SCORES).stream()) == []
    first_week = future[future["week"] == future["week"].min()]
    deliver(cfg, probe, "week-1.csv", first_week)
    assert store.get(Collection.CHALLENGES, winner)["status"] == TrialStatus.ON_TRIAL  # 1 of 2 weeks
    deliver(cfg, probe, "weeks-2-3.csv", future[future["week"] > future["week"].min()])

    scores = promotion.shadow_scores(store, winner, challengers[winner])
    assert [s["week"] for s in scores] == sorted(str(w) for w in future["week"].unique())
    assert sum(s["challenger_error"] for s in scores) < sum(s["champion_error"] for s in scores)
    assert served_version(cfg, winner) == challengers[winner] and served_version(cfg, winner, CHALLENGER) is None
    promoted = [m for m in store.alias_history(winner) if m["alias"] == "champion"][-1]
    assert (promoted["action"], promoted["actor"]) == ("promote", promotion.SHADOW_ACTOR)
    assert "won the shadow scoring" in promoted["reason"]
    assert store.get(Collection.CHALLENGES, winner)["status"] == TrialStatus.PROMOTED
    decided = [d for d in store.decisions(isbn=winner) if d["cause"].get("object", "").endswith("weeks-2-3.csv")]
    assert decided[0]["inputs"]["champion_version"] == challengers[winner]  # decided as the new champion

    assert served_version(cfg, loser) == champions[loser] and served_version(cfg, loser, CHALLENGER) is None
    retired = store.alias_history(loser)[-1]
    assert (retired["alias"], retired["action"], retired["from_version"]) == (CHALLENGER, "retire", challengers[loser])
    assert "lost the shadow scoring" in retired["reason"] and store.get(Collection.CHALLENGES, loser)["status"] == TrialStatus.RETIRED


def on_trial(cfg, store, seed: int, require_approval: bool) -> tuple[str, str, str]:
    """An ISBN with a champion and a challenger on trial: (isbn, champion, challenger)."""
    frame = sample(1, years=2, seed=seed)
    isbn = frame["isbn"].iloc[0]
    champion = register_fitted(cfg, store, isbn, frame, "theta", "champion")
    challenger = register_fitted(cfg, store, isbn, frame, "theta", CHALLENGER, scale=1.2)
    store.col(Collection.CHALLENGES).document(isbn).set({"isbn": isbn, "version": challenger, "champion_version": champion,
                                              "status": TrialStatus.ON_TRIAL, "require_approval": require_approval})
    return isbn, champion, challenger


def test_a_won_trial_settled_by_concurrent_deliveries_is_promoted_once(cfg, probe):
    store = RunStore(cfg)
    isbn, _, challenger = on_trial(cfg, store, seed=62, require_approval=False)
    for week in ("2026-11-09", "2026-11-16"):
        store.col(Collection.SHADOW_SCORES).document(f"{isbn}-v{challenger}-{week}").set({
            "isbn": isbn, "version": challenger, "week": week, "challenger_error": 1.0, "champion_error": 3.0})
    trial = store.get(Collection.CHALLENGES, isbn)
    settling = cfg.model_copy(update={"promotion": cfg.promotion.model_copy(update={"weeks_to_decide": 2})})
    with ThreadPoolExecutor(3) as pool:  # two uploads and a redelivery scoring the same weeks
        outcomes = list(pool.map(lambda cid: promotion.settle(settling, store, trial, cid), ["c1", "c2", "c3"]))
    assert sorted(o.split(":")[0] for o in outcomes) == ["promoted"] + ["settled by another delivery"] * 2
    moves = [m for m in store.alias_history(isbn) if m["action"] == "promote" and m["actor"] == promotion.SHADOW_ACTOR]
    assert [m["to_version"] for m in moves] == [challenger]
    assert served_version(cfg, isbn) == challenger and store.get(Collection.CHALLENGES, isbn)["status"] == TrialStatus.PROMOTED


def test_an_approval_never_overrides_the_settling_of_its_trial(cfg, probe):
    store = RunStore(cfg)
    isbn, champion, challenger = on_trial(cfg, store, seed=63, require_approval=True)
    promotion.request_approval(cfg, store, isbn, challenger, champion, ["family changed"], "on trial", "cid-a")
    assert promotion.claim_trial(store, isbn, challenger, promotion.SHADOW_ACTOR)  # scoring found it lost
    with pytest.raises(promotion.ApprovalError, match="being settled by shadow-scoring"):
        promotion.decide_approval(cfg, isbn, challenger, True, "looks fine", "lead@bookcast.local", store=store)
    assert served_version(cfg, isbn) == champion
    assert store.get(Collection.APPROVALS, promotion.approval_id(isbn, challenger))["status"] == ApprovalStatus.PENDING
    store.col(Collection.CHALLENGES).document(isbn).update({"status": TrialStatus.RETIRED, "outcome": "lost: MAE 3 vs 1"})
    with pytest.raises(promotion.ApprovalError, match="approval is withdrawn"):
        promotion.decide_approval(cfg, isbn, challenger, True, "looks fine", "lead@bookcast.local", store=store)
    assert served_version(cfg, isbn) == champion
    assert store.get(Collection.APPROVALS, promotion.approval_id(isbn, challenger))["status"] == ApprovalStatus.WITHDRAWN


def test_canary_serving_is_deterministic_per_caller_and_labelled(cloud, cfg, probe):
    store = RunStore(cfg)
    frame = sample(2, years=2, seed=67)
    on_trial, alone = sorted(frame["isbn"].unique())
    champion = register_fitted(cfg, store, on_trial, frame[frame["isbn"] == on_trial], models.BASELINE, "champion",
                               baseline=True)
    challenger = register_fitted(cfg, store, on_trial, frame[frame["isbn"] == on_trial], models.BASELINE, CHALLENGER,
                                 scale=1.5)
    register_fitted(cfg, store, alone, frame[frame["isbn"] == alone], models.BASELINE, "champion")
    callers = [f"client-{i}" for i in range(40)]
    expected = {c: in_canary(c, 0.5) for c in callers}
    assert 10 <= sum(expected.values()) <= 30 and in_canary("client-1", 0.0) is False
    port = free_port()
    proc = cloud.start_function("forecast", project=cfg.project_id, port=port, extra_env={
        "BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix, "BOOKCAST_PROMOTION__CANARY_SHARE": "0.5"})
    url = f"http://127.0.0.1:{port}"
    try:
        for caller in callers:
            for _ in range(2):  # the same caller, the same answer
                response = requests.get(url, params={"isbn": [on_trial, alone], "horizon": 4},
                                        headers={"X-Caller": caller}, timeout=30)
                assert response.status_code == 200, response.text
                answers = {a["isbn"]: a for a in response.json()["forecasts"]}
                alias, version = ("challenger", challenger) if expected[caller] else ("champion", champion)
                assert (answers[on_trial]["alias"], answers[on_trial]["version"]) == (alias, version)
                assert answers[alone]["alias"] == "champion"  # no trial: the champion serves everyone
                assert f"{on_trial}={alias}:{version}" in response.headers["X-Bookcast-Served"]
        in_param = next(c for c in callers if expected[c])
        by_param = requests.get(url, params={"isbn": on_trial, "caller": in_param, "format": "csv"}, timeout=30)
        assert by_param.headers["X-Bookcast-Served"] == f"{on_trial}=challenger:{challenger}"
        assert by_param.text.splitlines()[1].split(",")[1] == challenger
    finally:
        stop(proc)


def test_a_risky_promotion_waits_for_approval_and_round_trips_with_an_audit_record(cloud, cfg, probe):
    cfg = cfg.model_copy(update={"promotion": cfg.promotion.model_copy(update={"require_approval": True})})
    store = RunStore(cfg)
    frame = sample(1, years=2, seed=71)
    isbn = frame["isbn"].iloc[0]
    champion = register_fitted(cfg, store, isbn, frame, "theta", "champion")

    def candidate(scale: float, risk: str) -> str:
        version = register_fitted(cfg, store, isbn, frame, models.BASELINE, None, scale=scale)
        forecast = model_store.serving_forecast(cfg, registry.client(cfg).get_model_version(
            cfg.model_name(isbn), version).run_id)
        outcome = promotion.after_gates(cfg, store, isbn, version, models.BASELINE, forecast, None, "cid-approval")
        assert outcome.status == "challenger" and "waits for approval" in outcome.reason
        assert risk in outcome.reason
        return version

    first = candidate(2.0, "model family changed: theta → seasonal_naive")
    assert served_version(cfg, isbn) == champion and served_version(cfg, isbn, CHALLENGER) == first
    alert = next(a for a in store.stream("alerts") if a["key"] == f"approval:{isbn}:{first}")
    assert "waits for approval" in alert["title"] and "bookcast approve" in alert["detail"]
    listed = json.loads(bookcast(cfg, "approvals", "--format", "json").stdout)
    assert [(a["isbn"], a["version"], a["champion"]) for a in listed] == [(isbn, first, champion)]
    assert listed[0]["trial"] == {"weeks": 0, "needed": cfg.promotion.weeks_to_decide, "challenger_mae": None,
                                  "champion_mae": None}

    approved = bookcast(cfg, "approve", isbn, first, "--reason", "checked the launch plan")
    assert approved.returncode == 0, approved.stderr
    result = json.loads(approved.stdout)
    assert result["status"] == "approved" and served_version(cfg, isbn) == first
    assert served_version(cfg, isbn, CHALLENGER) is None
    audit = store.get("audit", result["audit_id"])
    assert (audit["kind"], audit["decision"], audit["reason"]) == ("approval", "approved", "checked the launch plan")
    assert audit["actor"].endswith("(bookcast cli)")
    move = [m for m in store.alias_history(isbn) if m["alias"] == "champion"][-1]
    assert (move["to_version"], move["actor"]) == (first, audit["actor"]) and "approved by" in move["reason"]
    assert store.get(Collection.APPROVALS, promotion.approval_id(isbn, first))["status"] == ApprovalStatus.APPROVED
    again = promotion.decide_approval(cfg, isbn, first, True, "checked the launch plan", "someone", store)
    assert again == {**result, "replayed": True}
    with pytest.raises(promotion.ApprovalError, match="approved already"):
        promotion.decide_approval(cfg, isbn, first, False, "too late", "someone", store)

    # Over HTTP: the rollback function's route, with the same identity rules as a rollback.
    second = candidate(4.0, "differ from the champion's by 100%")  # twice the units of the first
    port = free_port()
    proc = cloud.start_function("rollback", project=cfg.project_id, port=port,
                                extra_env={"BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix,
                                           "BOOKCAST_IDENTITY__ALLOWED_CALLERS": '["domain:bookcast.local"]'})
    url = cloud.function_url("rollback", port)
    try:
        body = {"isbn": isbn, "version": second, "reason": "forecast too high", "actor": "says it is the CEO"}
        assert requests.post(f"{url}/reject", json=body, timeout=30).status_code == 401
        outsider = mint_local_token(cfg, url, email="intruder@example.org")
        refused = requests.post(f"{url}/reject", json=body, headers={"Authorization": f"Bearer {outsider}"}, timeout=30)
        assert refused.status_code == 403 and served_version(cfg, isbn, CHALLENGER) == second
        signed = {"Authorization": f"Bearer {mint_local_token(cfg, url)}"}
        bad = requests.post(f"{url}/reject", json={**body, "version": "v2"}, headers=signed, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "version"
        response = requests.post(f"{url}/reject", json=body, headers=signed, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "rejected"
    finally:
        stop(proc)
    assert served_version(cfg, isbn) == first and served_version(cfg, isbn, CHALLENGER) is None
    audit = store.get("audit", response.json()["audit_id"])
    assert (audit["actor"], audit["note"], audit["decision"]) == ("operator@bookcast.local", "says it is the CEO",
                                                                  "rejected")
    refusals = [a for a in store.stream("audit") if a["kind"] == "refused"]
    assert sorted(a["route"] for a in refusals) == ["reject", "reject"]
    assert store.alias_history(isbn)[-1]["action"] == "retire" and json.loads(
        bookcast(cfg, "approvals", "--format", "json").stdout) == []
