"""The dashboard's pages: server-rendered HTML (Flask and Jinja, no JavaScript), so every
filter, sort and link is a plain URL that works in any browser and in tests.

Pages read Firestore through RunStore and the champion index. The registry is asked once
per fleet page (one search for quarantined versions, shared/dashboard/fleet.py) and by an
ISBN's own page (its versions, and its forecast through the forecast function's serving path).
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from flask import Flask, Response, abort, redirect, render_template, request, url_for

from shared import alerting, isbn as isbn_rules, model_store
from shared.config import Settings, settings
from shared.dashboard import charts, inbox
from shared.dashboard.fleet import STATE_MEANING, STATES, counts, fleet, select
from shared.runstore import RunStore, now, unpack_isbns
from shared.states import RunStatus
from shared.trace import timeline
from shared.layout import Collection
from shared.states import HealthStatus
from shared.causes import CauseKind

LIST_LIMIT = 200  # rows on the runs, uploads and alerts pages (newest first)
DRIFT_LIMIT = 5000  # decisions with a degradation measurement read for the drift page


def create_app(cfg: Settings | None = None, store: RunStore | None = None) -> Flask:
    cfg = cfg or settings()
    app = Flask(__name__)
    app.config["store"] = store
    forecasts = None  # the forecast function's service, created on the first ISBN page

    def db() -> RunStore:
        if app.config["store"] is None:
            app.config["store"] = RunStore(cfg)
        return app.config["store"]

    @app.template_filter("when")
    def when(value) -> str:
        return f"{value:%Y-%m-%d %H:%M:%S}" if isinstance(value, datetime) else (value or "–")

    @app.template_filter("num")
    def num(value, fmt: str = "{:.2f}") -> str:
        return "–" if value is None else fmt.format(value)

    @app.context_processor
    def common() -> dict:
        return {"project": cfg.project_id, "profile": cfg.profile}

    @app.get("/health")
    def health():
        return {"status": HealthStatus.OK}

    @app.get("/")
    def fleet_page():
        rows, quarantine_known = fleet(cfg, db())
        args = request.args
        sort = args.get("sort", "state")
        shown = select(rows, state=args.get("state") or None, family=args.get("family") or None,
                       query=args.get("q"), sort=sort, descending=args.get("order") == "desc")
        return render_template("fleet.html", rows=shown, total=len(rows), counts=counts(rows), states=STATES,
                               meaning=STATE_MEANING, families=sorted({r.family for r in rows if r.family}),
                               args=args, sort=sort, quarantine_known=quarantine_known)

    @app.get("/isbn/<isbn>")
    def isbn_page(isbn: str):
        isbn = checked_isbn(isbn)
        store = db()
        try:
            versions = model_store.versions(cfg, isbn)
            target = model_store.resolve(cfg, isbn)
        except model_store.RegistryUnavailable as error:
            versions, target, registry_error = [], None, str(error)
        else:
            registry_error = None
        moves = store.alias_history(isbn)
        served = next((v for v in versions if target and v.version == target.version), None)
        rollback = {"isbns": [isbn], "to": "previous", "reason": "REASON"}
        return render_template(
            "isbn.html", isbn=isbn, versions=list(reversed(versions)), served=served, moves=list(reversed(moves)),
            rollbacks=[m for m in reversed(moves) if m["action"] in ("rollback", "revert")],
            decisions=store.decisions(limit=50, isbn=isbn), registry_error=registry_error,
            rollback_json=json.dumps(rollback), region=cfg.region, alias=cfg.serving.alias,
            series=store.series(isbn) is not None)

    @app.get("/isbn/<isbn>/forecast.png")
    def forecast_png(isbn: str):
        nonlocal forecasts
        from shared.serving import ApiError, ForecastQuery, ForecastService, to_png

        if forecasts is None:
            forecasts = ForecastService(cfg)
        try:
            query = ForecastQuery(isbns=[checked_isbn(isbn)], horizon=int(request.args.get("horizon", 26)),
                                  interval=float(request.args.get("interval", 0.8)), format="png")
            return Response(to_png(forecasts, forecasts.forecast(query)), mimetype="image/png")
        except ApiError as error:
            return Response(error.message, status=error.status, mimetype="text/plain")

    @app.get("/isbn/<isbn>/versions.png")
    def versions_png(isbn: str):
        return png(charts.version_trend(isbn, model_store.versions(cfg, checked_isbn(isbn))))

    @app.get("/runs")
    def runs_page():
        status = request.args.get("status") or None
        if status and status not in tuple(RunStatus):
            abort(400, f"unknown run status {status!r}; one of {', '.join(tuple(RunStatus))}")
        return render_template("runs.html", runs=db().runs(limit=LIST_LIMIT, status=status), statuses=tuple(RunStatus),
                               status=status, duration=duration, tally=tally)

    @app.get("/runs/<run_id>")
    def run_page(run_id: str):
        run = db().run(run_id)
        if run is None:
            abort(404, f"no run {run_id}")
        results = sorted((run.get("results") or {}).values(), key=lambda r: r["isbn"])
        return render_template("run.html", run=run, results=results, duration=duration(run))

    @app.get("/uploads")
    def uploads_page():
        from google.cloud import firestore

        query = db().col(Collection.CAUSES).where(filter=firestore.FieldFilter("kind", "==", CauseKind.UPLOAD))
        uploads = sorted((unpack_isbns(s.to_dict()) for s in query.stream()), key=lambda c: c["received_at"],
                         reverse=True)
        status = request.args.get("status") or None
        shown = [u for u in uploads if not status or u["status"] == status][:LIST_LIMIT]
        return render_template("uploads.html", uploads=shown, status=status,
                               statuses=sorted({u["status"] for u in uploads}))

    @app.get("/alerts")
    def alerts_page():
        from google.cloud import firestore

        newest = db().col(Collection.ALERTS).order_by(alerting.LAST_SENT_AT, direction=firestore.Query.DESCENDING)
        states = [s.to_dict() for s in newest.limit(LIST_LIMIT).stream()]
        day = alerting.counts(db(), now() - timedelta(hours=23), now())
        received = inbox.read(inbox.path(cfg), LIST_LIMIT)
        return render_template("alerts.html", alerts=states, day=day, received=received,
                               inbox_path=inbox.path(cfg), never=alerting.NEVER)

    @app.get("/trace")
    def trace_form():
        cid = request.args.get("correlation_id", "").strip()
        return redirect(url_for("trace_page", correlation_id=cid)) if cid else render_template("trace.html", steps=None)

    @app.get("/trace/<path:correlation_id>")
    def trace_page(correlation_id: str):
        logs = Path(cfg.state_dir) / "logs"
        return render_template("trace.html", correlation_id=correlation_id, steps=timeline(db(), correlation_id),
                               logs=logs if logs.is_dir() else None)

    @app.get("/drift")
    def drift_page():
        measured = drift_measurements(cfg, db())
        latest: dict[str, dict] = {}
        for m in measured:  # oldest first: the last one per ISBN stays
            latest[m["isbn"]] = m
        worst = sorted(latest.values(), key=lambda m: m["ratio"], reverse=True)
        return render_template("drift.html", latest=worst, measurements=len(measured),
                               limit=1 + cfg.decision.degradation_threshold,
                               min_weeks=cfg.decision.min_new_weeks_for_degradation)

    @app.get("/drift.png")
    def drift_png():
        return png(charts.drift(drift_measurements(cfg, db()), 1 + cfg.decision.degradation_threshold))

    @app.errorhandler(400)
    @app.errorhandler(404)
    def not_found(error):
        return render_template("error.html", error=error), error.code

    return app


def checked_isbn(raw: str) -> str:
    problem = isbn_rules.problem(raw)
    if problem:
        abort(404, problem)
    return isbn_rules.normalise(raw)


def duration(run: dict) -> timedelta | None:
    start, end = run.get("started_at") or run.get("created_at"), run.get("finished_at")
    return end - start if start and end else None


def tally(run: dict) -> list[tuple[str, int]]:
    """A run's per-ISBN results counted by status: the counts its last shard wrote, or its results."""
    counted = run.get("counts") or Counter(r["status"] for r in (run.get("results") or {}).values())
    return sorted((status, n) for status, n in counted.items() if n)


def drift_measurements(cfg: Settings, store: RunStore) -> list[dict]:
    """Every decision's measurement of its served version on weeks it never saw, oldest
    first: time, ISBN, version, weeks, unseen MAE, holdout MAE and their ratio."""
    from google.cloud import firestore

    query = (store.col(Collection.DECISIONS).where(filter=firestore.FieldFilter("inputs.degradation.ratio", ">=", 0))
             .select(["isbn", "decided_at", "inputs.degradation", "inputs.champion_version", "action"])
             .limit(DRIFT_LIMIT))
    rows = [{"isbn": d["isbn"], "at": d["decided_at"], "version": d["inputs"].get("champion_version"),
             "action": d.get("action"), **d["inputs"]["degradation"]} for d in (s.to_dict() for s in query.stream())]
    return sorted(rows, key=lambda r: r["at"])


def png(content: bytes) -> Response:
    return Response(content, mimetype="image/png", headers={"Cache-Control": "no-store"})
