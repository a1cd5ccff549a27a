"""Cloud Function `rollback` (HTTP)."""
import functions_framework


@functions_framework.http
def rollback(request):
    return {"status": "ok"}
