"""Rolling the serving alias back: one ISBN, several, or all; to a given version, to the
previous champion, or (emergency) to the last known good version.

Every call backs up the alias state first, moves aliases (never copies models), verifies
each move by reading the alias back, and writes an audit record. A ``request_id`` makes a
call idempotent: repeating it returns the recorded result instead of rolling back again.
"""
from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared import isbn as isbn_rules
from shared import registry
from shared.config import Settings
from shared.identity import Caller
from shared.logs import get_logger, labelled
from shared.layout import AuditKind, Collection
from shared.runstore import RunStore, now
from shared.states import AliasMove, RollbackStatus
from shared.version_tags import Gate, Tag, VersionTags

log = get_logger(__name__)


class RollbackRequest(BaseModel):
    """Sizes are bounded here, before any side effect: the reason and actor are written to
    MLflow tags, alias history, the audit record and alerts, and a 1 MB reason once failed
    after the alias had moved, with nothing recorded. ``actor`` is what the caller says about
    itself: kept as a note; who called is the verified identity."""
    model_config = ConfigDict(extra="forbid")
    isbns: list[str] = Field([], max_length=1000)
    all: bool = False
    to: str = Field("previous", description="a version number, 'previous' or 'last_known_good'")
    reason: str = Field(min_length=3, max_length=2000)
    actor: str | None = Field(None, max_length=200)
    request_id: str | None = Field(None, max_length=200)
    allow_quarantined: bool = False

    @field_validator("isbns")
    @classmethod
    def valid(cls, values: list[str]) -> list[str]:
        problems = [p for p in map(isbn_rules.problem, values) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return sorted({isbn_rules.normalise(v) for v in values})

    @field_validator("to")
    @classmethod
    def target(cls, value: str) -> str:
        if value not in ("previous", "last_known_good") and not value.isdigit():
            raise ValueError("to must be a version number, 'previous' or 'last_known_good'")
        return value

    @model_validator(mode="after")
    def scope(self) -> "RollbackRequest":
        if self.all == bool(self.isbns):
            raise ValueError("give either isbns or all=true")
        if self.all and self.to.isdigit():
            raise ValueError("a version number applies to one ISBN; use previous or last_known_good with all")
        return self


class IsbnRollback(BaseModel):
    isbn: str
    status: RollbackStatus
    from_version: str | None = None
    to_version: str | None = None
    detail: str = ""


def _versions(cfg: Settings, isbn: str) -> dict[str, dict]:
    client = registry.client(cfg)
    return {v.version: VersionTags(dict(v.tags or {})) for v in client.search_model_versions(f"name='{cfg.model_name(isbn)}'")}


def choose_target(cfg: Settings, store: RunStore, isbn: str, current: str | None, to: str,
                  allow_quarantined: bool) -> tuple[str | None, str]:
    """The version to roll back to, and why (or None and why not)."""
    versions = _versions(cfg, isbn)
    if not versions:
        return None, f"no registered model for {isbn}"
    if to.isdigit():
        if to not in versions:
            return None, f"version {to} does not exist (versions: {', '.join(sorted(versions, key=int))})"
        if versions[to].is_quarantined and not allow_quarantined:
            return None, f"version {to} is quarantined ({versions[to].get(Tag.QUARANTINE_REASON)}); " \
                         "pass allow_quarantined=true to serve it anyway"
        return to, f"version {to} as requested"
    former = [m["to_version"] for m in store.alias_history(isbn) if m["alias"] == cfg.serving.alias]
    older = [v for v in dict.fromkeys(reversed(former)) if current is None or int(v) < int(current)]
    usable = [v for v in older if v in versions and not versions[v].is_quarantined]
    if to == "previous":
        return (usable[0], f"the champion before v{current}") if usable else (None, "no earlier champion to return to")
    good = [v for v in usable if versions[v].get(Tag.GATE) == Gate.PASSED] or \
           [v for v in usable if versions[v].is_baseline]
    if good:
        return good[0], f"last known good: v{good[0]} passed the gates when it served"
    return None, "no earlier version that passed the gates"


def rollback(cfg: Settings, request: RollbackRequest, caller: Caller, store: RunStore | None = None,
             correlation_id: str | None = None) -> dict:
    """``caller`` is the verified identity (shared/identity.py) recorded as the actor. Every
    line logged meanwhile carries the audit id and the correlation id."""
    audit_id = request.request_id or f"rollback-{uuid.uuid4().hex[:12]}"
    correlation_id = correlation_id or audit_id
    with labelled(audit_id=audit_id, correlation_id=correlation_id):
        return _rolled_back(cfg, request, caller, store or RunStore(cfg), audit_id, correlation_id)


def _rolled_back(cfg: Settings, request: RollbackRequest, caller: Caller, store: RunStore, audit_id: str,
                 correlation_id: str) -> dict:
    done = store.get(Collection.AUDIT, audit_id)
    if done:
        return {**done["result"], "replayed": True}
    isbns = request.isbns or registry.served_isbns(cfg)
    backup = {isbn: getattr(registry.version_by_alias(cfg, isbn), "version", None) for isbn in isbns}
    backup_id = f"{audit_id}-backup"
    store.col(Collection.ALIAS_BACKUPS).document(backup_id).set({"alias": cfg.serving.alias, "targets": backup, "at": now(),
                                                        "actor": caller.email, "audit_id": audit_id})
    outcomes = []
    for isbn in isbns:
        current = backup[isbn]
        target, why = choose_target(cfg, store, isbn, current, request.to, request.allow_quarantined)
        if target is None:
            outcomes.append(IsbnRollback(isbn=isbn, status=RollbackStatus.FAILED, from_version=current, detail=why))
            continue
        if target == current:
            outcomes.append(IsbnRollback(isbn=isbn, status=RollbackStatus.UNCHANGED, from_version=current, to_version=target,
                                         detail=f"already serving v{target}"))
            continue
        registry.move_alias(cfg, store, isbn, target, AliasMove.ROLLBACK, f"{request.reason} ({why})", caller.email,
                            correlation_id)
        verified = getattr(registry.version_by_alias(cfg, isbn), "version", None)
        status = RollbackStatus.ROLLED_BACK if verified == target else RollbackStatus.FAILED
        outcomes.append(IsbnRollback(isbn=isbn, status=status, from_version=current, to_version=target,
                                     detail=why if status == RollbackStatus.ROLLED_BACK else f"verification read v{verified}"))
    result = {"audit_id": audit_id, "backup_id": backup_id, "ok": all(o.status != RollbackStatus.FAILED for o in outcomes),
              "results": [o.model_dump() for o in outcomes]}
    store.col(Collection.AUDIT).document(audit_id).set({"kind": AuditKind.ROLLBACK, "request": request.model_dump(), "result": result,
                                               "actor": caller.email, "actor_issuer": caller.issuer,
                                               "note": request.actor, "at": now(), "correlation_id": correlation_id})
    log.warning("rollback by %s: %s", caller.email, ", ".join(f"{o.isbn} {o.status}" for o in outcomes),
                extra={"reason": request.reason})
    return result
