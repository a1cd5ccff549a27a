"""Cloud Function `rollback` (HTTP). Wired and deployed with the others; the rollback
logic is not built yet, so it says so instead of pretending to succeed."""
import functions_framework
from flask import jsonify


@functions_framework.http
def rollback(request):
    return jsonify({"error": {"code": "not_implemented",
                              "message": "rollback is not built yet; move the alias with "
                                         "MlflowClient.set_registered_model_alias meanwhile"}}), 501
