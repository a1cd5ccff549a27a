"""The monthly cost of the deployed system, estimated from the topology (functions, their
memory and CPU, scheduler jobs), the catalogue size, the upload rhythm and the measured
compute per ISBN. Every unit price is an assumption stated in ``CostSettings`` (list prices
of the region, without free tiers or discounts) and printed beside the line it prices, so
the estimate can be checked and re-run with real prices (``BOOKCAST_COST__*``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from croniter import croniter

from shared.config import Settings
from shared.topology import Topology

MONTH_SECONDS = 30.44 * 86400
WEEKS_PER_MONTH = 30.44 / 7
MIB = 1024 * 1024


@dataclass
class Catalogue:
    isbns: int
    uploads_per_week: float = 1.0
    retrain_share: float = 0.1          # of ISBN-weeks re-tuned (bench/savings.py measures it)
    retrain_seconds: float = 1.5        # CPU seconds per re-tuned ISBN (bench/real_accuracy.py)
    refresh_seconds: float = 0.1        # CPU seconds per refreshed ISBN
    forecast_requests_per_month: float = 100_000


@dataclass
class Line:
    item: str
    quantity: float
    unit: str
    unit_price: float
    monthly: float


def runs_per_month(schedule: str) -> float:
    """How often a cron schedule fires in a month (counted over four weeks, scaled)."""
    from datetime import datetime, timezone

    start = datetime(2026, 1, 4, 23, 59, 59, tzinfo=timezone.utc)  # just before a Monday: its first tick counts
    times, count = croniter(schedule, start), 0
    while times.get_next(datetime) < datetime(2026, 2, 2, tzinfo=timezone.utc):
        count += 1
    return count * WEEKS_PER_MONTH / 4


def _memory_gib(memory: str) -> float:
    value = float(memory.rstrip("GiMi"))
    return value if memory.endswith("Gi") else value / 1024


def estimate(cfg: Settings, topology: Topology, catalogue: Catalogue) -> list[Line]:
    prices = cfg.cost
    ticks = {job.name: runs_per_month(job.schedule) for job in topology.scheduler_jobs}
    uploads = catalogue.uploads_per_week * WEEKS_PER_MONTH
    isbn_weeks = catalogue.isbns * WEEKS_PER_MONTH
    versions = isbn_weeks * catalogue.uploads_per_week  # each upload refreshes or re-tunes every reporting ISBN
    # Function invocations and their busy seconds: fixed start-up work plus work per ISBN.
    invocations = {
        "trigger-training": uploads + sum(n for name, n in ticks.items() if "monitor" not in name),
        # ticks, three training events per run (queued, started, finished), one model change per version
        "monitor": ticks.get("monitor", 0) + 3 * uploads + versions,
        "forecast": catalogue.forecast_requests_per_month,
        "rollback": 10,
    }
    busy_seconds = {
        "trigger-training": invocations["trigger-training"] * 0.5 + uploads * catalogue.isbns * prices.decision_seconds,
        "monitor": ticks.get("monitor", 0) * (0.5 + catalogue.isbns * prices.check_seconds) + (3 * uploads + versions) * 0.05,
        "forecast": invocations["forecast"] * 0.005,
        "rollback": 10 * 2.0,
    }
    lines = []
    for function in topology.functions:
        seconds = busy_seconds.get(function.name, 0.0)
        per_second = (float(function.cpu or 1) * prices.function_vcpu_second
                      + _memory_gib(function.memory) * prices.function_gib_second)
        calls = invocations.get(function.name, 0.0)
        lines.append(Line(f"function {function.name}: {calls:,.0f} calls, {seconds:,.0f} busy s", seconds,
                          "busy second", per_second, seconds * per_second + calls / 1e6 * prices.function_million_requests))
    training_seconds = versions * ((catalogue.retrain_share * catalogue.retrain_seconds)
                                   + (1 - catalogue.retrain_share) * catalogue.refresh_seconds)
    node_hours = training_seconds / prices.training_vcpus / 3600 + uploads * prices.job_startup_hours
    lines.append(Line(f"Vertex AI training ({cfg.vertex.machine_type}, incl. start-up per job)", node_hours,
                      "node hour", prices.training_node_hour, node_hours * prices.training_node_hour))
    reads = (uploads * catalogue.isbns * 3 + ticks.get("monitor", 0) * catalogue.isbns
             + ticks.get("reconcile-uploads", 0) * 5)
    writes = uploads * catalogue.isbns * 5 + versions * 2
    lines.append(Line(f"Firestore document reads ({reads:,.0f})", reads / 1e5, "100k reads",
                      prices.firestore_100k_reads, reads / 1e5 * prices.firestore_100k_reads))
    lines.append(Line(f"Firestore document writes ({writes:,.0f})", writes / 1e5, "100k writes",
                      prices.firestore_100k_writes, writes / 1e5 * prices.firestore_100k_writes))
    messages = sum(invocations.values()) + versions * 2
    pubsub_tib = messages * prices.message_bytes / 1024 ** 4
    lines.append(Line(f"Pub/Sub ({messages:,.0f} messages)", pubsub_tib, "TiB", prices.pubsub_tib,
                      pubsub_tib * prices.pubsub_tib))
    stored_gib = (catalogue.isbns * 156 * 30 + versions * prices.version_artifact_bytes * 12) / 1024 ** 3
    lines.append(Line("Cloud Storage (uploads, a year of MLflow artifacts)", stored_gib, "GiB-month",
                      prices.storage_gib_month, stored_gib * prices.storage_gib_month))
    lines.append(Line(f"Cloud Scheduler ({len(topology.scheduler_jobs)} jobs)", len(topology.scheduler_jobs), "job-month",
                      prices.scheduler_job_month, len(topology.scheduler_jobs) * prices.scheduler_job_month))
    lines.append(Line("MLflow tracking server (one small always-on instance)", 1, "month", prices.mlflow_server_month,
                      prices.mlflow_server_month))
    return lines


def as_dicts(lines: list[Line]) -> list[dict]:
    return [asdict(line) for line in lines]
