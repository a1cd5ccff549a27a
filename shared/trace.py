"""One correlation id through every step, in time order: the cause (an upload, a tick, a
request), its decisions, its runs and the alias moves they made, from Firestore. Read by
`bookcast trace` and the dashboard's trace page."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.runstore import RunStore
from shared.layout import Collection


@dataclass(frozen=True)
class Step:
    at: datetime
    step: str      # cause | decision | run | alias
    what: str
    isbn: str | None = None
    run_id: str | None = None


def timeline(store: RunStore, correlation_id: str) -> list[Step]:
    records = store.by_correlation(correlation_id)
    steps = []
    for cause in records[Collection.CAUSES]:
        what = cause.get("object") or cause.get("job") or cause.get("requested_by", "")
        steps.append(Step(cause["received_at"], "cause", f"{cause['kind']} {what}: {cause['status']}"
                          + (f" ({'; '.join(cause['reasons'][:3])})" if cause.get("reasons") else ""),
                          run_id=cause.get("run_id")))
    for d in records[Collection.DECISIONS]:
        steps.append(Step(d["decided_at"], "decision", f"{d['isbn']} {d['action']}: {'; '.join(d['reasons'])}",
                          isbn=d["isbn"], run_id=d.get("run_id")))
    for run in records[Collection.RUNS]:
        steps.append(Step(run["created_at"], "run", f"{run['run_id']} queued for {len(run['isbns'])} ISBN(s)",
                          run_id=run["run_id"]))
        if run.get("started_at"):
            steps.append(Step(run["started_at"], "run", f"{run['run_id']} started ({run.get('launcher')})",
                              run_id=run["run_id"]))
        if run.get("finished_at"):
            versions = ", ".join(f"{i}:v{v}" for i, v in (run.get("mlflow_versions") or {}).items())
            steps.append(Step(run["finished_at"], "run", f"{run['run_id']} {run['status']} {versions}".strip(),
                              run_id=run["run_id"]))
    for move in records[Collection.ALIAS_HISTORY]:
        steps.append(Step(move["at"], "alias", f"{move['isbn']} {move['alias']} v{move['from_version']} → "
                                               f"v{move['to_version']} ({move['action']})", isbn=move["isbn"]))
    return sorted(steps, key=lambda s: s.at)
