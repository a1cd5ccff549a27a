"""The rollback function's HTTP routes: POST / rolls back (shared/rollback.py), POST
/approve and /reject decide a risky promotion (shared/promotion.py). Only a caller with a
verified ID token gets through (shared/identity.py; each refusal is audited); every refusal
is an ApiError in the common envelope."""
from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationError

from shared.api_errors import ApiError, first_problem
from shared.config import Settings

APPROVAL_ROUTES = {"approve": True, "reject": False}
ROLLBACK_ROUTE = "rollback"


def answer(cfg: Settings, method: str, path: str, headers: Mapping[str, str], body: Any) -> tuple[dict, int]:
    """The response body and status for one request."""
    try:
        return _routed(cfg, method, path, headers, body)
    except ApiError as error:
        return error.body(), error.status


def route_of(path: str) -> str:
    route = path.rstrip("/").rsplit("/", 1)[-1]
    return route if route in APPROVAL_ROUTES else ROLLBACK_ROUTE


def _routed(cfg: Settings, method: str, path: str, headers: Mapping[str, str], body: Any) -> tuple[dict, int]:
    from shared.identity import IdentityError, record_refusal, verified_caller

    if method != "POST":
        raise ApiError(405, "method_not_allowed", "POST a JSON rollback request")
    correlation_id = headers.get("X-Correlation-Id")
    route = route_of(path)
    try:
        caller = verified_caller(headers, cfg)
    except IdentityError as error:
        claimed = body.get("actor") if isinstance(body, dict) else None
        record_refusal(cfg, error, route, note=str(claimed)[:200] if claimed else None, correlation_id=correlation_id)
        raise ApiError(error.status, error.code, error.message) from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "send a JSON object with Content-Type: application/json")
    if route in APPROVAL_ROUTES:
        return _approval(cfg, body, caller, APPROVAL_ROUTES[route], correlation_id)
    from shared.rollback import RollbackRequest, rollback

    result = rollback(cfg, _parsed(RollbackRequest, body), caller, correlation_id=correlation_id)
    return result, 200 if result["ok"] else 409


def _approval(cfg: Settings, body: dict, caller, approve: bool, correlation_id: str | None) -> tuple[dict, int]:
    from shared.promotion import ApprovalError, ApprovalRequest, decide_approval

    parsed = _parsed(ApprovalRequest, body)
    try:
        result = decide_approval(cfg, parsed.isbn, parsed.version, approve, parsed.reason, caller.email,
                                 note=parsed.actor, correlation_id=correlation_id)
    except ApprovalError as error:
        raise ApiError(409, "not_pending", str(error)) from None
    return result, 200 if result["ok"] else 409


def _parsed(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as error:
        field, message = first_problem(error)
        raise ApiError(400, "invalid_request", message, field=field) from None
