"""Cloud Function `rollback` (HTTP), called with
`gcloud functions call rollback --region R --data '{"isbns": [...], "to": "previous", "reason": "..."}'`.
Scopes: isbns or all=true; to: a version, previous, or last_known_good (emergency).
POST /approve and /reject {"isbn", "version", "reason"} decide a risky promotion waiting for
approval. Only a verified caller gets through: none → 401, an invalid or unlisted one → 403
(shared/admin_api.py)."""
import functions_framework
from flask import jsonify

from shared.config import settings
from shared.logs import configure

configure(http=True)


@functions_framework.http
def rollback(request):
    from shared.admin_api import answer

    body, status = answer(settings(), request.method, request.path, request.headers, request.get_json(silent=True))
    return jsonify(body), status
