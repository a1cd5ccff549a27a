"""The ZenML training pipeline. It runs on ZenML's local SQLite store and local
orchestrator by default: no server, no login, no token to expire. The durable history is
Firestore's, so losing ZenML's store loses nothing that matters."""

from typing import Annotated, Tuple

from zenml import get_step_context, pipeline, step

from shared.training import flow


@step(enable_cache=False)
def load(request: dict) -> Annotated[dict, "decided_series"]:
    return flow.load(request)


@step(enable_cache=False)
def validate(request: dict, decided_series: dict) -> Tuple[Annotated[dict, "valid_series"], Annotated[dict, "refusals"]]:
    valid_series, refusals = flow.validate(request, decided_series)
    return valid_series, refusals  # a literal tuple: ZenML reads multiple outputs from the source


@step(enable_cache=False)
def preprocess(valid_series: dict) -> Annotated[dict, "series"]:
    return flow.preprocess(valid_series)


@step(enable_cache=False)
def train_register_promote(request: dict, series: dict, refusals: dict) -> Annotated[list, "results"]:
    """Refresh or tune each ISBN (tuning in parallel processes), then gate, register and
    promote it as soon as it is ready: one step, so champions appear while the run goes on."""
    return flow.train_and_register(request, series, refusals, str(get_step_context().pipeline_run.id))


@step(enable_cache=False)
def publish(request: dict, results: list) -> Annotated[dict, "summary"]:
    return flow.record_and_publish(request, results, str(get_step_context().pipeline_run.id))


@pipeline(enable_cache=False)
def training_pipeline(request: dict):
    decided_series = load(request)
    valid_series, refusals = validate(request, decided_series)
    series = preprocess(valid_series)
    results = train_register_promote(request, series, refusals)
    publish(request, results)


def run(request: dict) -> dict:
    """Run the pipeline on one shard of a run and return its summary (status and per-ISBN
    results)."""
    name = f"{request['run_id']}-k{request.get('shard') or 0:03d}-a{request.get('attempt', 1)}"
    pipeline_run = training_pipeline.with_options(run_name=name)(request=request)
    return pipeline_run.steps["publish"].output.load()
