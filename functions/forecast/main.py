"""Cloud Function `forecast` (HTTP)."""
import functions_framework


@functions_framework.http
def forecast(request):
    return {"status": "ok"}
