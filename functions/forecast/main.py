"""Cloud Function `forecast` (HTTP): weekly forecasts with intervals, served from the
`champion` alias (a share of callers gets an ISBN's `challenger`: `caller` param, X-Caller
header or client IP). GET ?isbn=...&horizon=26 or POST {"isbns": [...], "horizon": 26};
format=json|csv|png; GET /health for the monitor."""
import functions_framework
from flask import Response, jsonify

from shared.config import settings
from shared.logs import configure, get_logger
from shared.api_errors import ApiError
from shared.serving import ForecastService, parse_query, served_header, to_csv, to_png

configure(http=True)
log = get_logger("forecast")
service = ForecastService(settings())


def caller_key(request) -> str | None:
    """Who asks, for canary serving: an X-Caller header, else the client's address (Cloud
    Run puts it first in X-Forwarded-For)."""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    return request.headers.get("X-Caller") or forwarded or request.remote_addr


@functions_framework.http
def forecast(request):
    if request.path.rstrip("/").endswith("/health"):
        return jsonify(service.health())
    try:
        cfg = settings().serving
        query = parse_query(request.method, request.content_type, request.args.to_dict(flat=False),
                            request.get_data(cache=False), cfg.max_isbns_per_request, cfg.max_horizon)
        result = service.forecast(query, caller_key(request))
    except ApiError as error:
        log.info("rejected %s %s: %s", request.method, request.full_path, error.message,
                 extra={"status": error.status, "code": error.code})
        return jsonify(error.body()), error.status
    except Exception:  # never a stack trace to the caller
        log.exception("forecast failed for %s", request.full_path)
        return jsonify({"error": {"code": "internal", "message": "internal error; it has been logged"}}), 500
    headers = {"X-Bookcast-Stale": "true", "Warning": '110 - "served from cache: registry unreachable"'} \
        if result["stale"] else {}
    headers["X-Bookcast-Served"] = served_header(result)  # which alias and version answered, in every format
    if query.format == "csv":
        return Response(to_csv(result), mimetype="text/csv", headers=headers)
    if query.format == "png":
        return Response(to_png(service, result), mimetype="image/png", headers=headers)
    return jsonify(result), 200, headers
