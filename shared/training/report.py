"""A training run's HTML report in MLflow: every ISBN's status, holdout metrics and gate
verdict, with its holdout plot.

Where it lives: one MLflow run per training run (experiment ``bookcast-runs``, run name =
our run id, tagged with the correlation id), artifact ``report.html``. Not on each model
version: a version's MLflow run already holds its own plot and metrics, and a report about
the whole run would otherwise be copied into every version of every ISBN. It is built once,
by the shard that closes the run (each shard only knows its own ISBNs), from the results
every shard recorded. The plots stay in the versions' runs and are referenced, not copied,
so a 10,000-ISBN report is a few megabytes of table, not gigabytes of images.
"""
from __future__ import annotations

import html

from shared.config import Settings
from shared.logs import get_logger
from shared.states import IsbnStatus

log = get_logger(__name__)

EXPERIMENT = "bookcast-runs"
REPORT = "report.html"
STATUS_COLOURS = {IsbnStatus.PROMOTED: "#2b8a3e", IsbnStatus.CHALLENGER: "#1971c2", IsbnStatus.BASELINE: "#e67700",
                  IsbnStatus.QUARANTINED: "#ae3ec9", IsbnStatus.FAILED: "#c92a2a", IsbnStatus.REFUSED: "#c92a2a"}


def _percent(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def _number(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def render(run: dict, results: dict[str, dict], tracking_uri: str, plot_artifact: str) -> str:
    """The report as one self-contained HTML page (the plots are the MLflow server's)."""
    counts: dict[str, int] = {}
    for result in results.values():
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    rows = []
    for isbn, result in sorted(results.items()):
        metrics = result.get("metrics") or {}
        colour = STATUS_COLOURS.get(result["status"], "#495057")
        # A tuned candidate's run holds its holdout plot; a baseline's or a refresh's has none
        # (the onerror hides the latter where the viewer runs scripts).
        plot = (f'<img loading="lazy" alt="holdout plot of {isbn}" onerror="this.remove()" '
                f'src="{html.escape(tracking_uri)}/get-artifact?path={plot_artifact}&amp;'
                f'run_uuid={html.escape(result["mlflow_run_id"])}">'
                if result.get("mlflow_run_id") and result["status"] != IsbnStatus.BASELINE else "")
        rows.append(
            f"<tr><td>{isbn}</td><td style='color:{colour}'>{html.escape(result['status'])}</td>"
            f"<td>{html.escape(str(result.get('version') or '–'))}</td><td>{_number(metrics.get('mase'))}</td>"
            f"<td>{_percent(metrics.get('wape'))}</td><td>{_number(metrics.get('relative_mae'))}</td>"
            f"<td>{_number(metrics.get('rmse'))}</td><td>{html.escape(result.get('reason', ''))}</td></tr>"
            + (f"<tr class='plot'><td colspan='8'>{plot}</td></tr>" if plot else ""))
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no results"
    cause = (run.get("cause") or {}).get("kind", "?")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(run['run_id'])}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #212529 }}
table {{ border-collapse: collapse }} td, th {{ padding: 4px 10px; border-bottom: 1px solid #dee2e6; text-align: left }}
th {{ background: #f1f3f5 }} tr.plot td {{ border-bottom: 2px solid #adb5bd }} img {{ max-width: 900px }}
</style></head><body>
<h1>Training run {html.escape(run['run_id'])}: {html.escape(run.get('status', '?'))}</h1>
<p>cause: {html.escape(cause)} · correlation id {html.escape(str(run.get('correlation_id', '')))} ·
{len(results)} ISBN(s): {html.escape(summary)} · compute {run.get('compute_seconds') or 0:.0f} s</p>
<p>Gates: beat seasonal naive on the holdout (MAE × naive below the limit), WAPE within the limit, not worse than
the champion by more than the margin. A quarantined candidate's reason names each rule it failed.</p>
<table><tr><th>ISBN</th><th>status</th><th>version</th><th>MASE</th><th>WAPE</th><th>MAE × naive</th><th>RMSE</th>
<th>gate verdict</th></tr>
{''.join(rows)}
</table></body></html>
"""


def _experiment_id(client) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(EXPERIMENT)
    except Exception:  # another run's last shard created it meanwhile
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def log_run_report(cfg: Settings, store, run_id: str) -> str | None:
    """Build the run's report from its recorded results and log it to MLflow; returns the
    report's MLflow run id. A report that cannot be written is logged, never the run's failure."""
    from shared import registry

    try:
        run = store.run(run_id) or {"run_id": run_id}
        results = store.run_results(run_id) or run.get("results") or {}
        page = render(run, results, cfg.mlflow_tracking_uri.rstrip("/"), registry.HOLDOUT_PLOT)
        client = registry.client(cfg)
        experiment_id = _experiment_id(client)
        report_run = client.create_run(experiment_id, run_name=run_id, tags={
            "pipeline_run_id": run_id, "correlation_id": str(run.get("correlation_id", "")),
            "status": str(run.get("status", ""))})
        client.log_text(report_run.info.run_id, page, REPORT)
        client.set_terminated(report_run.info.run_id)
        store.update_run(run_id, report_mlflow_run_id=report_run.info.run_id)
        log.info("run report in MLflow run %s (%s)", report_run.info.run_id, REPORT, extra={"run_id": run_id})
        return report_run.info.run_id
    except Exception as error:  # the run's models are registered already; its report is a view of them
        log.warning("no report for run %s: %r", run_id, error, extra={"run_id": run_id})
        return None
