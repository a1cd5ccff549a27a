"""Safe promotion: a candidate that passed the gates is served at once only when it is not
risky. A risky one (its next weeks' forecast far from the champion's, another model
family, or an ISBN rolled back recently) becomes the ``challenger`` instead:

- both forecasts are frozen when the trial starts (the challenger's, and the champion's
  structure re-estimated on the same data, so both start from the same week) and scored on
  every week uploaded after it (``shadow_scores``, one document per ISBN, challenger and
  week), from trigger_training as it decides each upload;
- after ``weeks_to_decide`` scored weeks the challenger is promoted if its error is lower,
  retired if not; meanwhile the forecast function serves it to a share of callers (canary);
- with ``require_approval`` a person decides instead (``bookcast approve|reject``, or the
  rollback function's approval route): the trial goes on as evidence, a loss still retires
  it, a win waits for the approval.

Every alias move goes through registry.move_alias / remove_alias (validated, recorded in
alias history, announced on model-changes); approvals are audited.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import isbn as isbn_rules
from shared import registry
from shared.alerting import WARNING, Alert, send
from shared.config import Settings
from shared.forecasting.serving import from_artifact
from shared.logs import get_logger
from shared.registry import CHALLENGER
from shared.layout import AuditKind, Collection
from shared.runstore import RunStore, now
from shared.states import AliasMove, ApprovalStatus, IsbnStatus, TrialStatus
from shared.version_tags import Tag, VersionTags

log = get_logger(__name__)
DECIDING_EXPIRES = timedelta(minutes=5)  # a claim older than this was left by a process that died
SETTLING_EXPIRES = timedelta(minutes=5)  # likewise for a challenge being settled
SHADOW_ACTOR = "shadow-scoring"


class ApprovalError(ValueError):
    """An approval or rejection that cannot be applied (none pending, decided already...)."""


class ApprovalRequest(BaseModel):
    """An approval or rejection as the rollback function's route receives it; sizes bounded
    before anything is written. ``actor`` is what the caller says about itself: a note."""
    model_config = ConfigDict(extra="forbid")
    isbn: str
    version: str = Field(pattern=r"^[0-9]{1,9}$")
    reason: str = Field(min_length=3, max_length=2000)
    actor: str | None = Field(None, max_length=200)

    @field_validator("isbn")
    @classmethod
    def valid(cls, value: str) -> str:
        problem = isbn_rules.problem(value)
        if problem:
            raise ValueError(problem)
        return isbn_rules.normalise(value)


# --- is it risky? -----------------------------------------------------------------------------
def weekly_means(forecast: dict) -> dict[str, float]:
    """A serving artifact's mean per week (ISO date), as the forecast function serves it."""
    weeks, mean, _, _ = from_artifact(forecast, len(forecast["mean"]), 0.8)
    return {w.isoformat(): float(m) for w, m in zip(weeks, mean)}


def forecast_change(candidate: dict[str, float], reference: dict[str, float], weeks: int) -> float | None:
    """Sum of |candidate − reference| over the first ``weeks`` weeks both forecast, as a share
    of the reference's units; None if they share no week."""
    common = sorted(set(candidate) & set(reference))[:weeks]
    if not common:
        return None
    difference = sum(abs(candidate[w] - reference[w]) for w in common)
    units = sum(abs(reference[w]) for w in common)
    return difference / units if units > 0 else (0.0 if difference == 0 else math.inf)


def risks(cfg: Settings, store: RunStore, isbn: str, candidate_family: str, candidate: dict[str, float],
          champion_family: str | None, reference: dict[str, float]) -> list[str]:
    """Why promoting the candidate over the champion is risky, one sentence each (none: safe)."""
    policy, found = cfg.promotion, []
    change = forecast_change(candidate, reference, policy.compare_weeks)
    if change is not None and change > policy.max_forecast_change:
        found.append(f"its next {policy.compare_weeks} weeks differ from the champion's by {change:.0%} "
                     f"(more than {policy.max_forecast_change:.0%})")
    if policy.family_change_is_risky and champion_family and champion_family != candidate_family:
        found.append(f"its model family changed: {champion_family} → {candidate_family}")
    since = now() - timedelta(days=policy.rollback_window_days)
    rolled_back = [m for m in store.alias_history(isbn) if m["alias"] == cfg.serving.alias
                   and m["action"] in (AliasMove.ROLLBACK, AliasMove.REVERT) and m["at"] >= since]
    if rolled_back:
        last = rolled_back[-1]
        found.append(f"the ISBN was {'rolled back' if last['action'] == 'rollback' else 'reverted'} "
                     f"v{last['from_version']} → v{last['to_version'] or 'none'} on {last['at']:%Y-%m-%d} "
                     f"(within {policy.rollback_window_days} days)")
    return found


# --- after the gates: champion, or challenger (and perhaps an approval) ------------------------
@dataclass
class Outcome:
    status: IsbnStatus  # promoted, challenger, or quarantined (validation put the previous challenger back)
    reason: str


def after_gates(cfg: Settings, store: RunStore, isbn: str, version: str, family: str, forecast: dict,
                reference: dict | None, correlation_id: str) -> Outcome:
    """Serve a candidate that passed the gates, or put it on trial when it is risky.
    ``reference`` is the champion's forecast from the same data (its structure re-estimated
    on the candidate's series), or None to use the forecast the champion serves. Nothing is
    risked by replacing no champion or a fallback (seasonal naive, the plain combination),
    which the gates already compared the candidate with on the same backtests."""
    from shared import model_store

    champion = registry.version_by_alias(cfg, isbn)
    if champion is None or VersionTags(champion.tags).is_baseline:
        return _promote(cfg, store, isbn, version, "passed the quality gates", "training", correlation_id)
    reference = reference or model_store.serving_forecast(cfg, champion.run_id)
    candidate_means, reference_means = weekly_means(forecast), weekly_means(reference)
    found = risks(cfg, store, isbn, family, candidate_means, champion.tags.get(Tag.FAMILY), reference_means)
    if not found:
        # A trial against the champion this replaces would be scored against the wrong model.
        _retire_challenger(cfg, store, isbn, f"superseded: v{version} became champion", correlation_id)
        return _promote(cfg, store, isbn, version, "passed the quality gates", "training", correlation_id)
    reason = "passed the quality gates but is risky: " + "; ".join(found)
    registry.move_alias(cfg, store, isbn, version, AliasMove.CHALLENGE, reason, "training", correlation_id, alias=CHALLENGER)
    if getattr(registry.version_by_alias(cfg, isbn, CHALLENGER), "version", None) != version:
        # Validation put the previous challenger back; its trial goes on.
        return Outcome(IsbnStatus.QUARANTINED, f"{reason}; it failed validation as challenger and serves nowhere")
    _withdraw_trial(store, isbn, f"superseded by v{version}")
    store.col(Collection.CHALLENGES).document(isbn).set({
        "isbn": isbn, "version": version, "champion_version": champion.version, "status": TrialStatus.ON_TRIAL, "risks": found,
        "challenger_forecast": json.dumps(candidate_means), "champion_forecast": json.dumps(reference_means),
        "data_end": forecast["data_end"], "started_at": now(), "correlation_id": correlation_id,
        "require_approval": cfg.promotion.require_approval})
    trial = (f"challenger on trial for {cfg.promotion.weeks_to_decide} uploaded week(s), served to "
             f"{cfg.promotion.canary_share:.0%} of callers")
    if cfg.promotion.require_approval:
        request_approval(cfg, store, isbn, version, champion.version, found,
                         f"It is on trial as challenger beside v{champion.version}", correlation_id)
        trial += "; its promotion waits for approval"
    return Outcome(IsbnStatus.CHALLENGER, f"{reason}: {trial}")


def _promote(cfg: Settings, store: RunStore, isbn: str, version: str, reason: str, actor: str,
             correlation_id: str) -> Outcome:
    registry.move_alias(cfg, store, isbn, version, AliasMove.PROMOTE, reason, actor, correlation_id)
    return Outcome(IsbnStatus.PROMOTED, reason)


def _retire_challenger(cfg: Settings, store: RunStore, isbn: str, why: str, correlation_id: str) -> None:
    """Take the challenger alias off and end its trial, if the ISBN has one."""
    if registry.remove_alias(cfg, store, isbn, CHALLENGER, AliasMove.RETIRE, why, "training", correlation_id):
        _withdraw_trial(store, isbn, why)


def _withdraw_trial(store: RunStore, isbn: str, why: str) -> None:
    """End the ISBN's running trial (a newer challenger replaces it), even one being settled
    right now: what settles it ends only its own trial (_end_trial) and its own alias."""
    trial = store.get(Collection.CHALLENGES, isbn)
    if trial and trial["status"] in (TrialStatus.ON_TRIAL, TrialStatus.SETTLING):
        _end_trial(store, trial, TrialStatus.RETIRED, why)
        _close_approval(store, isbn, trial["version"], ApprovalStatus.WITHDRAWN, why)


def _end_trial(store: RunStore, trial: dict, status: str, why: str) -> None:
    """End ``trial``, unless a newer trial of the ISBN replaced it meanwhile."""
    ref = store.col(Collection.CHALLENGES).document(trial["isbn"])

    def end(transaction) -> None:
        current = ref.get(transaction=transaction).to_dict()
        if current and current["version"] == trial["version"]:
            transaction.update(ref, {"status": status, "ended_at": now(), "outcome": why})

    store.in_transaction(end)


# --- shadow scoring, from trigger_training on every upload --------------------------------------
def score_upload(cfg: Settings, store: RunStore, weeks_by_isbn: dict[str, dict[str, int]], order: str,
                 correlation_id: str) -> dict[str, str]:
    """Score every running trial on the weeks just uploaded, then promote or retire the
    challengers that have enough weeks. Returns what happened per ISBN that has a trial.
    Safe to repeat: a week's score is one document, replaced only by a newer upload."""
    refs = {isbn: store.col(Collection.CHALLENGES).document(isbn) for isbn in weeks_by_isbn}
    trials = {i: t for i, t in store.read_many(None, refs).items() if t and open_to_settle(t)}
    outcomes = {}
    for isbn, trial in trials.items():
        _score(store, trial, weeks_by_isbn[isbn], order)
        outcomes[isbn] = settle(cfg, store, trial, correlation_id)
    return outcomes


def _score(store: RunStore, trial: dict, weeks: dict[str, int], order: str) -> None:
    challenger, champion = json.loads(trial["challenger_forecast"]), json.loads(trial["champion_forecast"])
    scored = sorted(w for w in weeks if w > trial["data_end"] and w in challenger and w in champion)
    refs = {w: store.col(Collection.SHADOW_SCORES).document(f"{trial['isbn']}-v{trial['version']}-{w}") for w in scored}
    stored = store.read_many(None, refs)
    batch = store.db.batch()
    for week in scored:
        if stored[week] and stored[week]["upload_order"] > order:
            continue  # a newer upload already scored this week
        actual = float(weeks[week])
        batch.set(refs[week], {
            "isbn": trial["isbn"], "version": trial["version"], "champion_version": trial["champion_version"],
            "week": week, "actual": actual, "challenger": round(challenger[week], 3), "champion": round(champion[week], 3),
            "challenger_error": round(abs(actual - challenger[week]), 3),
            "champion_error": round(abs(actual - champion[week]), 3), "upload_order": order, "scored_at": now()})
    if scored:
        batch.commit()


def open_to_settle(trial: dict) -> bool:
    """On trial, or left settling by a process that died."""
    return trial["status"] == TrialStatus.ON_TRIAL or (trial["status"] == TrialStatus.SETTLING and now() - trial["settling_at"] > SETTLING_EXPIRES)


def claim_trial(store: RunStore, isbn: str, version: str, by: str) -> dict | None:
    """The ISBN's trial of ``version``, marked settling, if it is open to settle: exactly one
    process promotes or retires a challenger (two uploads scoring the same weeks, a
    redelivery, an approval meanwhile). None if another settles or settled it."""
    ref = store.col(Collection.CHALLENGES).document(isbn)

    def claim(transaction) -> dict | None:
        trial = ref.get(transaction=transaction).to_dict()
        if not trial or trial["version"] != version or not open_to_settle(trial):
            return None
        transaction.update(ref, {"status": TrialStatus.SETTLING, "settling_by": by, "settling_at": now()})
        return trial

    return store.in_transaction(claim)


def shadow_scores(store: RunStore, isbn: str, version: str) -> list[dict]:
    from google.cloud import firestore

    query = store.col(Collection.SHADOW_SCORES).where(filter=firestore.FieldFilter("isbn", "==", isbn))
    return sorted((s for s in (d.to_dict() for d in query.stream()) if s["version"] == version),
                  key=lambda s: s["week"])


def standing(cfg: Settings, store: RunStore, trial: dict) -> dict:
    """The trial so far: weeks scored and each forecast's mean absolute error."""
    scores = shadow_scores(store, trial["isbn"], trial["version"])
    weeks = len(scores)
    return {"weeks": weeks, "needed": cfg.promotion.weeks_to_decide,
            "challenger_mae": round(sum(s["challenger_error"] for s in scores) / weeks, 3) if weeks else None,
            "champion_mae": round(sum(s["champion_error"] for s in scores) / weeks, 3) if weeks else None}


def settle(cfg: Settings, store: RunStore, trial: dict, correlation_id: str) -> str:
    """Promote a challenger that won over enough weeks (lower MAE than the champion's
    forecast from the same data), retire one that lost; with approval required, a win is
    announced to the approvers instead."""
    isbn, version = trial["isbn"], trial["version"]
    score = standing(cfg, store, trial)
    if score["weeks"] < score["needed"]:
        return f"on trial: {score['weeks']} of {score['needed']} week(s) scored"
    evidence = (f"MAE {score['challenger_mae']:g} vs the champion's {score['champion_mae']:g} over "
                f"{score['weeks']} uploaded week(s)")
    won = score["challenger_mae"] < score["champion_mae"]
    if won and trial.get("require_approval"):
        send(cfg, store, Alert(f"approval-won:{isbn}:{version}", WARNING,
                               f"{isbn} challenger v{version} won its trial and waits for approval",
                               f"{evidence}. bookcast approve {isbn} {version} --reason ... (or reject)",
                               correlation_id))
        return f"won, waiting for approval: {evidence}"
    if claim_trial(store, isbn, version, SHADOW_ACTOR) is None:
        return "settled by another delivery"
    if not won:
        registry.remove_alias(cfg, store, isbn, CHALLENGER, AliasMove.RETIRE, f"v{version} lost the shadow scoring: {evidence}",
                              SHADOW_ACTOR, correlation_id, only_from=version)
        _end_trial(store, trial, TrialStatus.RETIRED, f"lost: {evidence}")
        _close_approval(store, isbn, version, ApprovalStatus.WITHDRAWN, f"the challenger lost: {evidence}")
        return f"retired: {evidence}"
    _promote_challenger(cfg, store, trial, f"v{version} won the shadow scoring: {evidence}", SHADOW_ACTOR,
                        correlation_id)
    return f"promoted: {evidence}"


def _promote_challenger(cfg: Settings, store: RunStore, trial: dict, reason: str, actor: str,
                        correlation_id: str) -> bool:
    """Make the challenger champion (validated by the move) and end its trial; False if
    validation took it off again."""
    isbn, version = trial["isbn"], trial["version"]
    registry.move_alias(cfg, store, isbn, version, AliasMove.PROMOTE, reason, actor, correlation_id)
    served = getattr(registry.version_by_alias(cfg, isbn), "version", None) == version
    registry.remove_alias(cfg, store, isbn, CHALLENGER, AliasMove.RETIRE,
                          "promoted to champion" if served else "failed validation as champion", actor, correlation_id,
                          only_from=version)
    _end_trial(store, trial, TrialStatus.PROMOTED if served else TrialStatus.RETIRED, reason if served else "failed validation as champion")
    return served


# --- approvals --------------------------------------------------------------------------------
def approval_id(isbn: str, version: str) -> str:
    return f"{isbn}-v{version}"


def request_approval(cfg: Settings, store: RunStore, isbn: str, version: str, champion_version: str | None,
                     found: list[str], context: str, correlation_id: str) -> None:
    """Record a promotion that waits for a person (why it is risky, and where the version is
    meanwhile) and alert it."""
    store.col(Collection.APPROVALS).document(approval_id(isbn, version)).set({
        "isbn": isbn, "version": version, "champion_version": champion_version, "status": ApprovalStatus.PENDING, "risks": found,
        "requested_at": now(), "correlation_id": correlation_id})
    send(cfg, store, Alert(f"approval:{isbn}:{version}", WARNING, f"{isbn} v{version} waits for approval",
                           f"{'; '.join(found)}. {context}. bookcast approve {isbn} {version} --reason ... "
                           "(or reject)", correlation_id))


def _close_approval(store: RunStore, isbn: str, version: str, status: str, why: str) -> None:
    ref = store.col(Collection.APPROVALS).document(approval_id(isbn, version))
    snap = ref.get()
    if snap.exists and snap.to_dict()["status"] == ApprovalStatus.PENDING:
        ref.update({"status": status, "decided_at": now(), "decided_by": SHADOW_ACTOR, "decision_reason": why})


def pending_approvals(cfg: Settings, store: RunStore) -> list[dict]:
    """Pending approvals, oldest first, with the trial's standing so far."""
    from google.cloud import firestore

    query = store.col(Collection.APPROVALS).where(filter=firestore.FieldFilter("status", "==", ApprovalStatus.PENDING))
    found = sorted((d.to_dict() for d in query.stream()), key=lambda a: a["requested_at"])
    for approval in found:
        trial = store.get(Collection.CHALLENGES, approval["isbn"])
        if trial and trial["version"] == approval["version"]:
            approval["trial"] = standing(cfg, store, trial)
    return found


def decide_approval(cfg: Settings, isbn: str, version: str, approve: bool, reason: str, actor: str,
                    store: RunStore | None = None, note: str | None = None, correlation_id: str | None = None) -> dict:
    """Approve (the challenger becomes champion now) or reject (it is retired) a pending
    risky promotion, as ``actor`` (a verified caller, or the CLI's user); audited.
    Repeating a decision returns the recorded one."""
    store = store or RunStore(cfg)
    ref = store.col(Collection.APPROVALS).document(approval_id(isbn, version))

    def claim(transaction) -> dict | None:
        """One decision at a time: an approve and a reject (or an HTTP retry) arriving
        together must not both act. A claim left by a process that died expires."""
        approval = ref.get(transaction=transaction).to_dict()
        stale = approval and approval["status"] == ApprovalStatus.DECIDING and now() - approval["deciding_at"] > DECIDING_EXPIRES
        if approval and (approval["status"] == ApprovalStatus.PENDING or stale):
            transaction.update(ref, {"status": ApprovalStatus.DECIDING, "deciding_by": actor, "deciding_at": now()})
            return {**approval, "status": ApprovalStatus.PENDING}
        return approval

    approval = store.in_transaction(claim)
    if approval is None:
        raise ApprovalError(f"no approval was requested for {isbn} v{version}")
    wanted = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    if approval["status"] == ApprovalStatus.DECIDING:
        raise ApprovalError(f"{isbn} v{version} is being decided by {approval.get('deciding_by')} right now")
    if approval["status"] != ApprovalStatus.PENDING:
        if approval["status"] == wanted and approval.get("audit_id"):
            return {**store.get(Collection.AUDIT, approval["audit_id"])["result"], "replayed": True}
        raise ApprovalError(f"{isbn} v{version} is {approval['status']} already "
                            f"(by {approval.get('decided_by')}: {approval.get('decision_reason')})")
    correlation_id = correlation_id or f"approval-{uuid.uuid4().hex[:12]}"
    trial = claim_trial(store, isbn, version, actor)
    if trial is None and (settled := store.get(Collection.CHALLENGES, isbn)) and settled["version"] == version:
        # Shadow scoring is settling this trial, or ended it: that decides, not this call.
        if settled["status"] == TrialStatus.SETTLING:
            ref.update({"status": ApprovalStatus.PENDING})
            raise ApprovalError(f"{isbn} v{version}'s trial is being settled by {settled.get('settling_by')} right "
                                "now; nothing was changed")
        ref.update({"status": ApprovalStatus.WITHDRAWN, "decided_at": now(), "decided_by": SHADOW_ACTOR,
                    "decision_reason": f"its trial ended: {settled.get('outcome', settled['status'])}"})
        raise ApprovalError(f"{isbn} v{version}'s trial ended ({settled['status']}): the approval is withdrawn")
    if approve:
        if trial:
            served = _promote_challenger(cfg, store, trial, f"approved by {actor}: {reason}", actor, correlation_id)
        else:
            registry.move_alias(cfg, store, isbn, version, AliasMove.PROMOTE, f"approved by {actor}: {reason}", actor,
                                correlation_id)
            served = getattr(registry.version_by_alias(cfg, isbn), "version", None) == version
        status = ApprovalStatus.APPROVED if served else ApprovalStatus.FAILED
        detail = f"v{version} serves as champion" if served else f"v{version} failed validation; nothing changed"
    else:
        if getattr(registry.version_by_alias(cfg, isbn, CHALLENGER), "version", None) == version:
            registry.remove_alias(cfg, store, isbn, CHALLENGER, AliasMove.RETIRE, f"rejected by {actor}: {reason}", actor,
                                  correlation_id)
        if trial:
            _end_trial(store, trial, TrialStatus.RETIRED, f"rejected by {actor}: {reason}")
        status, detail = ApprovalStatus.REJECTED, f"v{version} will not serve; the champion stays"
    audit_id = f"approval-{uuid.uuid4().hex[:12]}"
    result = {"audit_id": audit_id, "isbn": isbn, "version": version, "status": status, "detail": detail,
              "ok": status != ApprovalStatus.FAILED}
    store.col(Collection.AUDIT).document(audit_id).set({"kind": AuditKind.APPROVAL, "decision": wanted, "isbn": isbn, "version": version,
                                             "reason": reason, "actor": actor, "note": note, "result": result,
                                             "at": now(), "correlation_id": correlation_id})
    if status != ApprovalStatus.FAILED:
        ref.update({"status": status, "decided_at": now(), "decided_by": actor, "decision_reason": reason,
                    "audit_id": audit_id})
    else:  # nothing changed: it can be decided again
        ref.update({"status": ApprovalStatus.PENDING})
    log.warning("%s %s v%s by %s: %s", wanted, isbn, version, actor, reason,
                extra={"isbn": isbn, "audit_id": audit_id, "reason": reason})
    return result
