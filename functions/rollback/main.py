"""Cloud Function `rollback` (HTTP), called with
`gcloud functions call rollback --region R --data '{"isbns": [...], "to": "previous", "reason": "..."}'`.
Scopes: isbns or all=true; to: a version, previous, or last_known_good (emergency).
Only a caller with a verified ID token may roll back (shared/identity.py): none → 401,
an invalid or unlisted one → 403, each refusal audited.
POST /approve and /reject {"isbn", "version", "reason"} decide a risky promotion waiting for
approval (shared/promotion.py), under the same identity rules."""
import functions_framework
from flask import jsonify
from pydantic import ValidationError

from shared.config import settings
from shared.logs import configure, get_logger

configure(http=True)
log = get_logger("rollback")


@functions_framework.http
def rollback(request):
    from shared.identity import IdentityError, record_refusal, verified_caller
    from shared.rollback import RollbackRequest, rollback as roll_back

    if request.method != "POST":
        return jsonify({"error": {"code": "method_not_allowed", "message": "POST a JSON rollback request"}}), 405
    body = request.get_json(silent=True)
    correlation_id = request.headers.get("X-Correlation-Id")
    route = request.path.rstrip("/").rsplit("/", 1)[-1]
    route = route if route in APPROVAL_ROUTES else "rollback"
    try:
        caller = verified_caller(request.headers, settings())
    except IdentityError as error:
        claimed = body.get("actor") if isinstance(body, dict) else None
        record_refusal(settings(), error, route, note=str(claimed)[:200] if claimed else None,
                       correlation_id=correlation_id)
        return jsonify({"error": {"code": error.code, "message": error.message}}), error.status
    if not isinstance(body, dict):
        return jsonify({"error": {"code": "malformed_json", "message": "send a JSON object with Content-Type: "
                                                                       "application/json"}}), 400
    if route in APPROVAL_ROUTES:
        return approval(body, caller, route == "approve", correlation_id)
    try:
        parsed = RollbackRequest.model_validate(body)
    except ValidationError as error:
        return invalid(error)
    result = roll_back(settings(), parsed, caller, correlation_id=correlation_id)
    return jsonify(result), 200 if result["ok"] else 409


APPROVAL_ROUTES = ("approve", "reject")


def approval(body: dict, caller, approve: bool, correlation_id: str | None):
    from shared.promotion import ApprovalError, ApprovalRequest, decide_approval

    try:
        parsed = ApprovalRequest.model_validate(body)
    except ValidationError as error:
        return invalid(error)
    try:
        result = decide_approval(settings(), parsed.isbn, parsed.version, approve, parsed.reason, caller.email,
                                 note=parsed.actor, correlation_id=correlation_id)
    except ApprovalError as error:
        return jsonify({"error": {"code": "not_pending", "message": str(error)}}), 409
    return jsonify(result), 200 if result["ok"] else 409


def invalid(error: ValidationError):
    first = error.errors()[0]
    return jsonify({"error": {"code": "invalid_request", "field": ".".join(map(str, first["loc"])) or None,
                              "message": first["msg"].removeprefix("Value error, ")}}), 400
