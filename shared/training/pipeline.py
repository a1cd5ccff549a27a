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
def train(request: dict, series: dict) -> Annotated[list, "candidates"]:
    """Split, tune, fit and evaluate each ISBN (in parallel processes)."""
    return flow.train_all(request, series)


@step(enable_cache=False)
def gate_register_promote(request: dict, candidates: list, series: dict, refusals: dict) -> Annotated[list, "results"]:
    request = {**request, "zenml_run_id": str(get_step_context().pipeline_run.id)}
    return flow.gate_and_register(request, candidates, series, refusals)


@step(enable_cache=False)
def publish(request: dict, results: list) -> Annotated[dict, "summary"]:
    request = {**request, "zenml_run_id": str(get_step_context().pipeline_run.id)}
    return flow.record_and_publish(request, results)


@pipeline(enable_cache=False)
def training_pipeline(request: dict):
    decided_series = load(request)
    valid_series, refusals = validate(request, decided_series)
    series = preprocess(valid_series)
    candidates = train(request, series)
    results = gate_register_promote(request, candidates, series, refusals)
    publish(request, results)


def run(request: dict) -> dict:
    """Run the pipeline and return its summary (status and per-ISBN results)."""
    pipeline_run = training_pipeline.with_options(run_name=f"{request['run_id']}-a{request.get('attempt', 1)}")(request=request)
    return pipeline_run.steps["publish"].output.load()
