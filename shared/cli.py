"""`bookcast`: train, request and follow training, inspect runs, decisions and uploads, roll back, make sample data."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.causes import CauseKind
from shared.config import load_settings
from shared.layout import Collection
from shared.logs import configure
from shared.reachability import Unreachable, require
from shared.states import CauseStatus, IsbnStatus, ReleaseStatus, RunStatus
from shared.text import shortened

# Piped output keeps full-width tables rather than rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
# Messages and progress for people: stdout stays for the output scripts read.
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 1, 2, 3, 4
EXIT_CODES = f"""exit status:
  0  done
  {EXIT_FAILED}  done, and the outcome is a failure (a failed run or rollback, nothing found)
  {EXIT_USAGE}  bad arguments or input (a wrong ISBN, a file that would be rejected, a missing file)
  {EXIT_UNREACHABLE}  a service it needs is not answering (emulator, MLflow, function): the message names it
  {EXIT_TIMEOUT}  --wait ran out of time before the outcome (the work goes on)
  130  interrupted"""


def _store(cfg):
    from shared.runstore import RunStore

    return RunStore(cfg)


def cmd_train(args, cfg) -> int:
    from shared.jobs import decided, decided_from_files, prepare_run
    from shared.lifecycle.launch import launcher_for
    from shared.sales import UploadRejected, UploadRules
    from shared.training.worker import execute

    store = _store(cfg)
    if args.file:
        try:
            series, problems = decided_from_files(args.file, UploadRules(prefix=cfg.upload_prefix))
        except UploadRejected as rejected:
            console.print("[red]" + "\n".join(rejected.reasons) + "[/]")
            return 2
    else:
        stored = store.all_series()
        isbns = args.isbn or sorted(stored)
        unknown = [i for i in isbns if i not in stored]
        if unknown or not isbns:
            console.print(f"[red]no uploaded data for {unknown or 'any ISBN'}[/]: upload first or pass --file")
            return 2
        series, problems = decided({i: (stored[i]["weeks"], stored[i]["sources"]) for i in isbns})
    for isbn, problem in problems.items():
        console.print(f"[yellow]{isbn} not trained[/]: {problem}")
    series = {i: s for i, s in series.items() if not args.isbn or i in args.isbn}
    correlation_id = f"cli-{uuid.uuid4().hex[:12]}"
    cause = {"kind": CauseKind.MANUAL, "key": correlation_id, "forced": True, "by": "bookcast train"}
    launcher = args.launcher or "local"
    request = prepare_run(cfg, store, series, cause, correlation_id, launcher)
    run_id = request.run_id
    if launcher == "vertex":
        info = launcher_for(cfg, "vertex").launch(request)
        store.update_run(run_id, launch=info.detail | {"handle": info.handle})
        console.print_json(json.dumps(info.detail))
        return 0
    console.print(f"run [bold]{run_id}[/] (correlation id {correlation_id})")
    summary = execute(request.model_dump(mode="json"))
    _results_table(summary["results"])
    console.print(f"run {run_id}: [bold]{summary['status']}[/]")
    return 0 if summary["status"] != RunStatus.FAILED else 1


def cmd_request(args, cfg) -> int:
    """Ask the deployed system (trigger-training) to train, through Pub/Sub like any cause."""
    import getpass

    from shared.events import TrainingRequest
    from shared.pubsub import publish

    correlation_id = f"request-{uuid.uuid4().hex[:12]}"
    message_id = publish(cfg, "training-requests", TrainingRequest(
        correlation_id=correlation_id, isbns=args.isbn or [], force=args.force, reason=args.reason,
        requested_by=getpass.getuser()))
    stderr.print(f"requested training of {', '.join(args.isbn) if args.isbn else 'every known ISBN'}"
                 f"{' (forced)' if args.force else ''}: message {message_id}, correlation id {correlation_id}")
    if not args.wait:
        emit(args, "training request", [{"message_id": message_id, "correlation_id": correlation_id}])
        return 0
    return _wait_for_outcome(args, cfg, correlation_id)


def _wait_for_outcome(args, cfg, correlation_id: str) -> int:
    """Follow a request by its correlation id until trigger-training has decided and the run
    (if any) has ended; print the decisions and the run's results."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
        TimeElapsedColumn, TimeRemainingColumn

    from shared.states import TERMINAL_RUN

    store = _store(cfg)
    deadline = time.monotonic() + args.timeout
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=True,
                        disable=not stderr.is_terminal)
    with progress:
        task = progress.add_task("waiting for trigger-training to decide", total=None)
        while True:
            found = store.by_correlation(correlation_id)
            causes, runs = found[Collection.CAUSES], found[Collection.RUNS]
            decided = [c for c in causes if c["status"] != CauseStatus.DECIDING]
            if decided and (decided[0].get("run_id") is None or (runs and all(r["status"] in TERMINAL_RUN for r in runs))):
                break
            if runs:
                run = runs[0]
                moved = {m["isbn"] for m in found[Collection.ALIAS_HISTORY]}
                progress.update(task, description=f"run {run['run_id']} {run['status']}", total=len(run["isbns"]),
                                completed=len(moved))
            if time.monotonic() > deadline:
                stderr.print(f"[yellow]no outcome within {args.timeout:g} s[/]; follow it with "
                             f"`bookcast trace {correlation_id}`")
                return EXIT_TIMEOUT
            time.sleep(1.0)
    cause = decided[0]
    if cause["status"] == CauseStatus.REJECTED:
        stderr.print(f"[red]request rejected:[/] {'; '.join(cause.get('reasons') or [])}")
        return 1
    decisions = sorted(found[Collection.DECISIONS], key=lambda d: d["isbn"])
    run = store.run(runs[0]["run_id"]) if runs else None  # with its results, gathered from its shards
    rows = [{"isbn": d["isbn"], "action": d["action"], "reasons": d["reasons"],
             **_result_columns(((run or {}).get("results") or {}).get(d["isbn"]))} for d in decisions]
    emit(args, f"outcome of {correlation_id}" + (f": run {run['run_id']} {run['status']}" if run else
                                                 ": nothing to train"), rows, {**RESULT_CELLS, "reasons": "; ".join})
    return 1 if run and run["status"] == RunStatus.FAILED else 0


RESULT_COLOURS = {IsbnStatus.PROMOTED: "green", IsbnStatus.CHALLENGER: "cyan", IsbnStatus.BASELINE: "yellow",
                  IsbnStatus.QUARANTINED: "magenta", IsbnStatus.FAILED: "red", IsbnStatus.REFUSED: "red"}


def _result_columns(result: dict | None) -> dict:
    """One ISBN's training result as columns: its version's holdout metrics (the baseline's
    own when the baseline serves) and why."""
    if result is None:
        return {"status": None, "version": None, "MASE": None, "WAPE": None, "vs naive": None, "reason": ""}
    metrics = result.get("metrics") or {}
    return {"status": result["status"], "version": result.get("version"), "MASE": metrics.get("mase"),
            "WAPE": metrics.get("wape"), "vs naive": metrics.get("relative_mae"), "reason": result.get("reason", "")}


RESULT_CELLS = {"status": lambda s: f"[{RESULT_COLOURS.get(s, 'white')}]{s}[/]" if s else "-",
                "MASE": lambda v: "-" if v is None else f"{v:.2f}", "WAPE": lambda v: "-" if v is None else f"{v:.0%}",
                "vs naive": lambda v: "-" if v is None else f"{v:.2f}", "reason": lambda r: shortened(r, 160)}


def _results_table(results: list[dict]) -> None:
    rows = [{"isbn": r["isbn"], **_result_columns(r)} for r in sorted(results, key=lambda r: r["isbn"])]
    emit(argparse.Namespace(format="table"), "results", rows, RESULT_CELLS)


def emit(args, title: str, rows: list[dict], shorten: dict | None = None) -> None:
    """A read command's rows: a table for people, or JSON / CSV alone on stdout for scripts
    (logs go to stderr). ``shorten`` gives a column's table form; JSON and CSV keep it whole."""
    if args.format == "json":
        print(json.dumps(rows, default=str, indent=2))
        return
    columns = list(rows[0]) if rows else []
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _csv_cell(v) for k, v in r.items()} for r in rows)
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*((shorten or {}).get(c, _cell)(row[c]) for c in columns))
    console.print(table)


def _csv_cell(value) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    return value.isoformat() if isinstance(value, datetime) else json.dumps(value, default=str)


def _cell(value) -> str:
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, (list, dict)):
        return ", ".join(value) if isinstance(value, list) else ", ".join(f"{k}: {v}" for k, v in value.items())
    return "-" if value is None else str(value)


def _few(values: list) -> str:
    return f"{len(values)}: " + ", ".join(values[:3]) + ("…" if len(values) > 3 else "")


def cmd_runs(args, cfg) -> int:
    rows = [{"run": r["run_id"], "status": r["status"], "created": r["created_at"], "isbns": r["isbns"],
             "cause": r.get("cause", {}).get("kind", "?"), "launcher": r.get("launcher", ""),
             "compute_seconds": r.get("compute_seconds"), "versions": r.get("mlflow_versions") or {}}
            for r in _store(cfg).runs(limit=args.limit, status=args.status)]
    emit(args, f"training runs ({cfg.project_id})", rows,
         {"isbns": _few, "versions": lambda v: ", ".join(f"{i[-4:]}:v{n}" for i, n in list(v.items())[:4])})
    return 0


def cmd_run(args, cfg) -> int:
    store = _store(cfg)
    run = store.run(args.run_id)
    if not run:
        stderr.print(f"[red]no run {args.run_id}[/] in project {cfg.project_id}: `bookcast runs` lists them")
        return EXIT_FAILED
    if args.format == "json":
        print(json.dumps(run, default=str, indent=2))
        return 0
    if args.format == "table":
        fields = {"status": run["status"], "cause": (run.get("cause") or {}).get("kind"),
                  "correlation id": run.get("correlation_id"), "launcher": run.get("launcher"),
                  "created": run.get("created_at"), "started": run.get("started_at"),
                  "finished": run.get("finished_at"), "compute seconds": run.get("compute_seconds"),
                  "error": run.get("error")}
        console.print(f"[bold]{run['run_id']}[/]")
        for name, value in fields.items():
            if value is not None:
                console.print(f"  {name:<16}{_cell(value)}", highlight=False)
        for shard in store.run_shards(run["run_id"]):
            done = sum(1 for _ in shard.get("results") or {})
            console.print(f"  shard {shard['index']:<10}{shard['status']}, {done} of {len(shard['isbns'])} ISBNs reported"
                          + (f", {shard['compute_seconds']} CPU s" if shard.get("compute_seconds") else "")
                          + (f", retried as {shard['retried_as']}" if shard.get("retried_as") else ""), highlight=False)
    results = run.get("results") or {}
    emit(args, f"results of {run['run_id']}", [{"isbn": i, **_result_columns(results.get(i))}
                                               for i in sorted(set(run["isbns"]) | set(results))], RESULT_CELLS)
    return 0


def cmd_cancel(args, cfg) -> int:
    from shared.lifecycle import shards
    from shared.lifecycle.launch import launcher_for

    store = _store(cfg)
    run = store.run(args.run_id, with_results=False)
    if not run:
        stderr.print(f"[red]no run {args.run_id}[/] in project {cfg.project_id}: `bookcast runs` lists them")
        return EXIT_FAILED
    asked = shards.request_cancel(store, args.run_id, args.shard)
    if not asked:
        stderr.print(f"[yellow]nothing to cancel[/]: {'that shard has' if args.shard is not None else 'every shard has'}"
                     " ended (`bookcast run` shows them)")
        return EXIT_FAILED
    if args.shard is None:  # the whole run: stop its job too, not only its shards' workers
        launcher_for(cfg, run.get("launcher")).cancel(run)
    stderr.print(f"asked shard(s) {', '.join(map(str, asked))} of {args.run_id} to stop; each records itself as "
                 "cancelled within seconds and releases its ISBNs")
    return 0


def cmd_decisions(args, cfg) -> int:
    rows = [{"decided": d["decided_at"], "isbn": d["isbn"], "action": d["action"], "reasons": d["reasons"],
             "cause": d["cause"].get("kind", "?"), "run": d.get("run_id")}
            for d in _store(cfg).decisions(limit=args.limit, isbn=args.isbn)]
    colours = {"train": "green", "refresh": "cyan", "coalesce": "yellow"}
    emit(args, "decisions: skip, refresh or retrain", rows,
         {"action": lambda a: f"[{colours.get(a, 'dim')}]{a}[/]", "reasons": "; ".join})
    return 0


def cmd_upload(args, cfg) -> int:
    from shared.gcs import storage_client
    from shared.sales import UploadRejected, UploadRules, parse_upload

    path = Path(args.file)
    name = f"{cfg.upload_prefix}{args.name or path.name}"
    if not args.no_check:  # the same rules the pipeline applies: fix the file before it is sent
        try:
            rows = parse_upload(name, path.read_bytes(), UploadRules(cfg.upload_prefix, cfg.training.max_upload_bytes))
        except UploadRejected as rejected:
            console.print(f"[red]{path} would be rejected; nothing was uploaded:[/]")
            for reason in rejected.reasons:
                console.print(f"  {reason}", highlight=False)
            return 2
        console.print(f"{path}: {len(rows)} valid rows for {rows['isbn'].nunique()} ISBNs")
    require(cfg, "gcs")  # after the check: a bad file is refused even while the bucket is unreachable
    blob = storage_client(cfg.project_id).bucket(args.bucket or cfg.data_bucket).blob(name)
    correlation_id = args.correlation_id or f"upload-{uuid.uuid4().hex[:12]}"
    blob.metadata = {"correlation_id": correlation_id}
    size = path.stat().st_size
    if size > UPLOAD_CHUNK_BYTES:  # a resumable upload in chunks, so the progress bar moves
        blob.chunk_size = UPLOAD_CHUNK_BYTES
    with _progress(transient=True) as progress, open(path, "rb") as file:
        reader = progress.wrap_file(file, total=size, description=f"uploading {path.name}")
        blob.upload_from_file(reader, size=size, content_type="text/csv" if path.suffix == ".csv" else None)
    console.print(f"uploaded gs://{blob.bucket.name}/{name} generation {blob.generation} "
                  f"(correlation id {correlation_id})")
    return 0


UPLOAD_CHUNK_BYTES = 1024 * 1024  # a multiple of 256 KiB, as resumable uploads require


def _progress(transient: bool = False):
    """A progress bar with ETA on stderr, shown only on a terminal (scripts get none)."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=transient,
                    disable=not stderr.is_terminal)


def cmd_uploads(args, cfg) -> int:
    causes = sorted((c for c in _store(cfg).stream(Collection.CAUSES) if c.get("kind") == CauseKind.UPLOAD),
                    key=lambda c: c["received_at"], reverse=True)[: args.limit]
    rows = [{"received": c["received_at"], "object": c["object"], "generation": c["generation"], "status": c["status"],
             "decisions": {a: n for a, n in (c.get("summary") or {}).items() if n}, "reasons": c.get("reasons") or [],
             "correlation_id": c.get("correlation_id"), "run": c.get("run_id")} for c in causes]
    emit(args, "uploads", rows, {"reasons": lambda r: "\n".join(r[:5]) + (f"\n… {len(r) - 5} more" if len(r) > 5 else ""),
                                 "decisions": lambda d: ", ".join(f"{n} {a}" for a, n in d.items())})
    return 0


def cmd_trace(args, cfg) -> int:
    """One upload (or any cause) through every step: Firestore records, then log lines."""
    from shared.trace import timeline as trace_timeline

    timeline = trace_timeline(_store(cfg), args.correlation_id)
    if not timeline:
        stderr.print(f"nothing recorded for {args.correlation_id} in project {cfg.project_id}")
        return EXIT_FAILED
    rows = [{"at": step.at, "step": step.step, "what": step.what, "isbn": step.isbn, "run": step.run_id}
            for step in timeline]
    emit(args, f"trace of {args.correlation_id}", rows, {"at": lambda at: f"{at:%H:%M:%S.%f}"[:-3]})
    logs = Path(cfg.state_dir) / "logs"
    if logs.is_dir():
        stderr.print(f"log lines: grep -h '\"correlation_id\": \"{args.correlation_id}\"' {logs}/*.log",
                     highlight=False)
    return 0


def cmd_sample(args, cfg) -> int:
    from shared.sales import to_csv
    from shared.sample_data import generate

    frame = generate(args.isbns, args.years, seed=args.seed)
    Path(args.out).write_bytes(to_csv(frame))
    console.print(f"wrote {len(frame)} rows for {frame['isbn'].nunique()} ISBNs to {args.out}")
    return 0


def cmd_aliases(args, cfg) -> int:
    rows = [{"at": m["at"], "alias": m["alias"], "from": m["from_version"], "to": m["to_version"], "action": m["action"],
             "actor": m["actor"], "reason": m["reason"]} for m in _store(cfg).alias_history(args.isbn)]
    emit(args, f"alias history of {args.isbn}", rows)
    return 0


def cmd_thresholds(args, cfg) -> int:
    """Recommend gate thresholds per segment from every candidate the registry holds."""
    from shared import thresholds

    history = thresholds.candidate_metrics(cfg)
    recommendations = thresholds.recommend(cfg, history)
    if args.format == "json":
        print(json.dumps({"candidates": len(history), "gates": cfg.gates.model_dump(),
                          "segments": thresholds.as_dicts(recommendations)}, indent=2))
        return 0
    if args.format == "csv":
        emit(args, "", thresholds.as_dicts(recommendations))
        return 0
    if not history:
        console.print("no candidate versions with holdout metrics in the registry yet: train first")
        return 0
    table = Table(title=f"gate thresholds from {len(history)} candidate versions (current: relative MAE < "
                        f"{cfg.gates.max_relative_mae:g}, WAPE ≤ {cfg.gates.max_wape:.0%})")
    for column in ("segment", "candidates", "beat naive", "quarantined now", "recommended max WAPE",
                   "quarantined with it", "RMSE < 100 would quarantine", "MAPE < 50% would quarantine"):
        table.add_column(column, justify="right" if column != "segment" else "left")
    for r in recommendations:
        limit = f"{r.recommended_max_wape:.0%}" if r.recommended_max_wape is not None else "–"
        table.add_row(r.segment, str(r.candidates), f"{r.beat_naive:.0%}", f"{r.quarantined_now:.0%}", limit,
                      f"{r.quarantined_recommended:.0%}", f"{r.quarantined_by_rmse_100:.0%}",
                      f"{r.quarantined_by_mape_50:.0%}")
    console.print(table)
    console.print("Set a segment's limit with BOOKCAST_GATES__MAX_WAPE; the absolute RMSE/MAPE limits stay off "
                  "unless configured (BOOKCAST_GATES__MAX_RMSE, BOOKCAST_GATES__MAX_MAPE).")
    return 0


def cmd_export(args, cfg) -> int:
    """Write every served ISBN's forecast to the bucket as Parquet and CSV (what the weekly
    scheduler job does)."""
    from shared.export import export

    result = export(cfg, _store(cfg), horizon=args.horizon, level=args.interval,
                    correlation_id=f"cli-export-{uuid.uuid4().hex[:8]}")
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    if args.format == "csv":
        emit(args, "", [result.as_dict()])
        return 0
    console.print(f"exported {result.isbns} ISBNs ({result.rows} rows) for the week of {result.week} in "
                  f"{result.seconds:.1f} s:")
    for uri in result.objects:
        console.print(f"  {uri}", highlight=False)
    for isbn, reason in result.left_out.items():
        console.print(f"[yellow]left out[/] {isbn}: {reason}")
    return 0


def cmd_cost(args, cfg) -> int:
    """The monthly cost estimate of the deployed system, with the prices it assumes."""
    from shared import cost
    from shared.topology import load

    catalogue = cost.Catalogue(isbns=args.isbns, uploads_per_week=args.uploads_per_week,
                               retrain_share=args.retrain_share, forecast_requests_per_month=args.forecast_requests)
    lines = cost.estimate(cfg, load(), catalogue)
    total = sum(line.monthly for line in lines)
    if args.format == "json":
        print(json.dumps({"catalogue": catalogue.__dict__, "monthly_usd": round(total, 2),
                          "lines": cost.as_dicts(lines), "prices": cfg.cost.model_dump()}, indent=2))
        return 0
    if args.format == "csv":
        emit(args, "", cost.as_dicts(lines))
        return 0
    table = Table(title=f"monthly estimate: {args.isbns:,} ISBNs, {args.uploads_per_week:g} upload(s) a week, "
                        f"{args.retrain_share:.0%} of ISBN-weeks re-tuned")
    for column in ("item", "quantity", "unit", "unit price (USD)", "monthly (USD)"):
        table.add_column(column, justify="left" if column in ("item", "unit") else "right")
    for line in lines:
        table.add_row(line.item, f"{line.quantity:,.2f}", line.unit, f"{line.unit_price:.6g}", f"{line.monthly:,.2f}")
    table.add_row("[bold]total[/]", "", "", "", f"[bold]{total:,.2f}[/]")
    console.print(table)
    console.print("Prices are assumptions (shared/config.py CostSettings, BOOKCAST_COST__*): list prices, no free tiers.")
    return 0


def cmd_token(args, cfg) -> int:
    """An ID token from the local stack's signing key, for the operator routes
    (rollback): `curl -H "Authorization: Bearer $(bookcast token --audience URL)" ...`."""
    from shared import identity

    if cfg.identity.issuer != "local":
        print("this profile trusts Google-signed tokens: use `gcloud auth print-identity-token`", file=sys.stderr)
        return 2
    print(identity.mint_local_token(cfg, args.audience, email=args.email, lifetime_seconds=args.lifetime))
    return 0


def cmd_rollback(args, cfg) -> int:
    """Call the rollback function as `gcloud functions call rollback` does: POST the JSON
    request with the caller's ID token (the local stack's key locally, gcloud's in the cloud)."""
    import requests

    url = args.url or rollback_url()
    body = {"isbns": args.isbn or [], "all": args.all, "to": args.to, "reason": args.reason,
            "allow_quarantined": args.allow_quarantined, **({"request_id": args.request_id} if args.request_id else {})}
    headers = {"Authorization": f"Bearer {_id_token(cfg, url)}", "X-Correlation-Id": args.correlation_id or
               f"cli-rollback-{uuid.uuid4().hex[:12]}"}
    try:
        response = requests.post(url, json=body, headers=headers, timeout=args.timeout)
    except requests.ConnectionError:
        raise Unreachable(f"the rollback function at {url} is not answering: run `make up`, or pass --url "
                          "(in the cloud: gcloud functions describe rollback --format 'value(url)')") from None
    except requests.Timeout:
        raise Unreachable(f"the rollback function at {url} did not answer within {args.timeout:g} s") from None
    answer = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
    if "error" in answer or response.status_code >= 400 and "results" not in answer:
        error = answer.get("error") or {"message": response.text[:500]}
        stderr.print(f"[red]rollback refused ({response.status_code} {error.get('code', '')}):[/] {error['message']}",
                     highlight=False)
        return EXIT_USAGE if response.status_code == 400 else EXIT_FAILED
    stderr.print(f"audit id {answer['audit_id']}, alias backup {answer['backup_id']}"
                 + (" (a repeated request: the recorded result)" if answer.get("replayed") else ""), highlight=False)
    columns = ("isbn", "status", "from_version", "to_version", "detail")  # the function's JSON has its keys sorted
    emit(args, f"rollback {'done' if answer['ok'] else 'incomplete'}",
         [{c: r.get(c) for c in columns} for r in answer["results"]])
    return 0 if answer["ok"] else EXIT_FAILED


def rollback_url() -> str:
    """The local rollback function's URL (`make env` exports it as BOOKCAST_ROLLBACK_URL)."""
    return os.environ.get("BOOKCAST_ROLLBACK_URL") or f"http://127.0.0.1:{os.environ.get('BOOKCAST_PORT_ROLLBACK', 8084)}"


def _id_token(cfg, audience: str) -> str:
    """The caller's ID token for ``audience``: minted with the local stack's key, or gcloud's
    own (`gcloud auth print-identity-token`, what `gcloud functions call` sends)."""
    import subprocess

    from shared import identity

    if cfg.identity.issuer == "local":
        return identity.mint_local_token(cfg, audience)
    done = subprocess.run(["gcloud", "auth", "print-identity-token", f"--audiences={audience}"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise UsageError(f"no ID token from gcloud: {done.stderr.strip()} (run `gcloud auth login`)")
    return done.stdout.strip()


def cmd_approvals(args, cfg) -> int:
    """Risky promotions waiting for a person, with their challenger's trial so far."""
    from shared.promotion import pending_approvals

    rows = [{"requested": a["requested_at"], "isbn": a["isbn"], "version": a["version"],
             "champion": a["champion_version"], "risks": a["risks"], "trial": a.get("trial") or {},
             "correlation_id": a["correlation_id"]} for a in pending_approvals(cfg, _store(cfg))]
    emit(args, "pending approvals (bookcast approve|reject ISBN VERSION --reason ...)", rows, {"risks": "; ".join})
    return 0


def cmd_approval(args, cfg) -> int:
    """Approve or reject one pending risky promotion as the local user; audited."""
    import getpass

    from shared.promotion import ApprovalError, decide_approval

    try:
        result = decide_approval(cfg, args.isbn, args.version, args.command == "approve", args.reason,
                                 f"{getpass.getuser()} (bookcast cli)", store=_store(cfg))
    except ApprovalError as error:
        print(f"bookcast {args.command}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


def cmd_promote(args, cfg) -> int:
    """Promote served versions from one environment to another (staging → production)."""
    import getpass

    from shared.release import ReleaseError, promote

    if bool(args.isbn) == args.all:
        print("bookcast promote: give ISBNs or --all", file=sys.stderr)
        return 2
    try:
        results = promote(cfg, args.source, args.target, args.isbn, f"{getpass.getuser()} (bookcast cli)", args.reason)
    except ReleaseError as error:
        print(f"bookcast promote: {error}", file=sys.stderr)
        return 2
    emit(args, f"promoted from {args.source} to {args.target}", results)
    return 0 if all(r["status"] != ReleaseStatus.FAILED for r in results) else 1


def isbn_argument(raw: str) -> str:
    """An ISBN as given on the command line (hyphens and spaces allowed, as in uploads),
    normalised; a wrong one ends the command with exit status 2 and the reason."""
    from shared import isbn

    problem = isbn.problem(raw)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return isbn.normalise(raw)


def _formats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table",
                        help="table for people; json or csv alone on stdout for scripts (logs go to stderr)")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    from shared.identity import LOCAL_CALLER

    parser = argparse.ArgumentParser(prog="bookcast", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bookcast {version('bookcast')}")
    parser.add_argument("--profile", help="development | test | production (default: BOOKCAST_PROFILE)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these (bookcast COMMAND --help for its options)")
    train = sub.add_parser("train", help="train ISBNs now (forced), from uploads or local files")
    train.add_argument("--file", action="append", help="local CSV/Parquet (repeatable); default: uploaded data")
    train.add_argument("--isbn", action="append", type=isbn_argument, help="restrict to these ISBNs (repeatable)")
    train.add_argument("--launcher", choices=["local", "vertex"], help="vertex: submit (or dry-run) a CustomJob")
    train.set_defaults(handler=cmd_train, needs=("firestore", "mlflow"))
    request = sub.add_parser("request", help="publish a training request for trigger-training (the event path)")
    request.add_argument("--isbn", action="append", type=isbn_argument,
                         help="these ISBNs (repeatable); default: every known ISBN")
    request.add_argument("--force", action="store_true", help="train even if nothing changed")
    request.add_argument("--reason", default="manual request", help="why, recorded with the decisions")
    request.add_argument("--wait", action="store_true",
                         help="wait for the decisions and the run, then print the outcome (exit 1 if the run failed)")
    request.add_argument("--timeout", type=float, default=1800, help="seconds --wait waits (default 1800; exit 4)")
    _formats(request)
    request.set_defaults(handler=cmd_request, needs=("pubsub", "firestore"))
    runs = sub.add_parser("runs", help="list training runs")
    runs.add_argument("--status", choices=[s.value for s in RunStatus], help="only runs in this state")
    runs.add_argument("--limit", type=int, default=30, help="newest first, at most this many")
    _formats(runs)
    runs.set_defaults(handler=cmd_runs, needs=("firestore",))
    run = sub.add_parser("run", help="show one run: its fields and per-ISBN results (json: the whole record)")
    run.add_argument("run_id", help="as `bookcast runs` lists it")
    _formats(run)
    run.set_defaults(handler=cmd_run, needs=("firestore",))
    cancel = sub.add_parser("cancel", help="stop a training run, or one of its shards")
    cancel.add_argument("run_id", help="as `bookcast runs` lists it")
    cancel.add_argument("--shard", type=int, help="only this shard (0-based, as `bookcast run` shows); the others go on")
    cancel.set_defaults(handler=cmd_cancel, needs=("firestore",))
    decisions = sub.add_parser("decisions", help="list training decisions")
    decisions.add_argument("--isbn", type=isbn_argument, help="only this ISBN's decisions")
    decisions.add_argument("--limit", type=int, default=50, help="newest first, at most this many")
    _formats(decisions)
    decisions.set_defaults(handler=cmd_decisions, needs=("firestore",))
    upload = sub.add_parser("upload", help="upload a sales file to the bucket (triggers the pipeline)")
    upload.add_argument("file", help="a CSV or Parquet file with isbn, week, units")
    upload.add_argument("--name", help="object name under the upload prefix (default: file name)")
    upload.add_argument("--bucket", help="default: BOOKCAST_DATA_BUCKET (others are rejected by the pipeline)")
    upload.add_argument("--correlation-id", help="follows the upload through every step (default: a new one)")
    upload.add_argument("--no-check", action="store_true", help="send without validating locally first")
    upload.set_defaults(handler=cmd_upload)
    uploads = sub.add_parser("uploads", help="list received uploads: accepted (with decisions) or rejected (why)")
    uploads.add_argument("--limit", type=int, default=30, help="newest first, at most this many")
    _formats(uploads)
    uploads.set_defaults(handler=cmd_uploads, needs=("firestore",))
    trace = sub.add_parser("trace", help="everything recorded for one correlation id, in time order")
    trace.add_argument("correlation_id", help="of an upload, request or tick (bookcast uploads lists them)")
    _formats(trace)
    trace.set_defaults(handler=cmd_trace, needs=("firestore",))
    sample = sub.add_parser("sample", help="generate realistic weekly sales")
    sample.add_argument("--isbns", type=int, default=12, help="how many titles (default 12)")
    sample.add_argument("--years", type=float, default=4, help="weeks of history, in years (default 4)")
    sample.add_argument("--seed", type=int, default=7, help="the same seed gives the same file")
    sample.add_argument("--out", default="sample_sales.csv", help="CSV to write (default sample_sales.csv)")
    sample.set_defaults(handler=cmd_sample)
    aliases = sub.add_parser("aliases", help="alias history of one ISBN")
    aliases.add_argument("isbn", type=isbn_argument, help="ISBN-13, hyphens allowed")
    _formats(aliases)
    aliases.set_defaults(handler=cmd_aliases, needs=("firestore",))
    limits = sub.add_parser("thresholds", help="recommend gate thresholds per volume/intermittency segment "
                                               "from the registry's history")
    _formats(limits)
    limits.set_defaults(handler=cmd_thresholds, needs=("mlflow",))
    exporting = sub.add_parser("export", help="write every served ISBN's forecast to the bucket (Parquet and CSV)")
    exporting.add_argument("--horizon", type=int, default=26, help="weeks ahead (default 26)")
    exporting.add_argument("--interval", type=float, default=0.8, help="interval level (default 0.8)")
    _formats(exporting)
    exporting.set_defaults(handler=cmd_export, needs=("firestore", "mlflow", "gcs"))
    estimate = sub.add_parser("cost", help="monthly cost estimate of the deployed system, with the unit prices assumed")
    estimate.add_argument("--isbns", type=int, default=1000, help="catalogue size (default 1000)")
    estimate.add_argument("--uploads-per-week", type=float, default=1.0, help="uploads a week, each naming every ISBN")
    estimate.add_argument("--retrain-share", type=float, default=0.1,
                          help="share of ISBN-weeks re-tuned rather than refreshed (bench/savings.py measures it)")
    estimate.add_argument("--forecast-requests", type=float, default=100_000, help="forecast API calls a month")
    _formats(estimate)
    estimate.set_defaults(handler=cmd_cost)
    rolling = sub.add_parser("rollback", help="move the champion alias back, through the rollback function "
                                              "(as `gcloud functions call rollback` would)")
    rolling.add_argument("isbn", nargs="*", type=isbn_argument, help="ISBNs to roll back (or --all)")
    rolling.add_argument("--all", action="store_true", help="every served ISBN")
    rolling.add_argument("--to", default="previous",
                         help="previous (default), last_known_good (emergency), or a version number (one ISBN)")
    rolling.add_argument("--reason", required=True, help="why: recorded in the audit, alias history and MLflow")
    rolling.add_argument("--request-id", help="makes a retry safe: the same id returns the recorded result")
    rolling.add_argument("--allow-quarantined", action="store_true", help="allow a quarantined target version")
    rolling.add_argument("--correlation-id", help="carried by every log line of the rollback (default: a new one)")
    rolling.add_argument("--url", help="the function's URL (default: BOOKCAST_ROLLBACK_URL, from `make env`)")
    rolling.add_argument("--timeout", type=float, default=120, help="seconds to wait for the answer (default 120)")
    _formats(rolling)
    rolling.set_defaults(handler=cmd_rollback)
    token = sub.add_parser("token", help="mint a local ID token for an operator route (the local stack's key)")
    token.add_argument("--audience", required=True, help="the function's URL, e.g. http://127.0.0.1:8084")
    token.add_argument("--email", default=LOCAL_CALLER, help="the caller the token names")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(handler=cmd_token)
    approvals = sub.add_parser("approvals", help="risky promotions waiting for approval")
    _formats(approvals)
    approvals.set_defaults(handler=cmd_approvals, needs=("firestore",))
    for verb, effect in (("approve", "serve it as champion now"), ("reject", "retire it; the champion stays")):
        deciding = sub.add_parser(verb, help=f"{verb} a risky promotion waiting for approval: {effect}")
        deciding.add_argument("isbn", type=isbn_argument, help="ISBN-13, hyphens allowed")
        deciding.add_argument("version", help="the version waiting (bookcast approvals lists them)")
        deciding.add_argument("--reason", required=True, help="why: recorded in the audit and the alias history")
        deciding.set_defaults(handler=cmd_approval, needs=("firestore", "mlflow"))
    releasing = sub.add_parser("promote", help="copy served versions to another environment's registry with their "
                                               "manifest (via the exchange bucket), behind an approval there")
    releasing.add_argument("isbn", nargs="*", type=isbn_argument, help="ISBNs to promote (or --all)")
    releasing.add_argument("--all", action="store_true", help="every ISBN served in the source environment")
    releasing.add_argument("--from", dest="source", required=True, help="source environment, e.g. staging")
    releasing.add_argument("--to", dest="target", required=True, help="target environment, e.g. production")
    releasing.add_argument("--reason", required=True, help="why: recorded in the target's audit and approval")
    _formats(releasing)
    releasing.set_defaults(handler=cmd_promote, needs=("firestore", "mlflow", "gcs"))
    return parser


class UsageError(Exception):
    """Input found wrong after parsing: the command ends with exit status 2 and the message."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure("WARNING" if args.command in ("runs", "run", "decisions", "aliases", "uploads", "upload", "trace",
                                            "thresholds", "cost", "token", "rollback") else "INFO", stream=sys.stderr,
              readable=sys.stderr.isatty())  # JSON for pipes and log collectors, plain lines for people
    try:
        cfg = load_settings(args.profile)
    except ValueError as error:  # an unknown profile, or a BOOKCAST_* variable that does not parse
        stderr.print(f"[red]bookcast: configuration:[/] {error}", highlight=False)
        return EXIT_USAGE
    return run_handler(args, cfg)


def run_handler(args, cfg) -> int:
    """The command, with every expected failure as a message and a documented exit status
    (see EXIT_CODES), never a traceback."""
    from google.api_core.exceptions import GoogleAPICallError, RetryError
    from google.auth.exceptions import DefaultCredentialsError

    def fail(status: int, message: str) -> int:
        stderr.print(f"[red]bookcast {args.command}:[/] {message}", highlight=False, soft_wrap=True)
        return status

    try:
        require(cfg, *getattr(args, "needs", ()))
        return args.handler(args, cfg)
    except Unreachable as error:
        return fail(EXIT_UNREACHABLE, str(error))
    except (UsageError, OSError) as error:  # OSError: a missing or unreadable file
        return fail(EXIT_USAGE, str(error))
    except DefaultCredentialsError:
        return fail(EXIT_UNREACHABLE, "no Google credentials and no local emulator configured: "
                                      'eval "$(make -s env)" for the local cloud, or `gcloud auth application-default '
                                      "login` for a real project")
    except (GoogleAPICallError, RetryError) as error:
        return fail(EXIT_FAILED, f"a Google API call failed: {error}")
    except KeyboardInterrupt:
        return fail(130, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
