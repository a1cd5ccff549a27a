"""The MLflow model registry: one registered model per ISBN, serving by alias.

Promotion and rollback move the ``champion`` alias; nothing is ever copied. MLflow keeps no
history of alias moves, so every move is also written to Firestore (RunStore) and announced
on the model-changes topic.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from shared.config import Settings
from shared.events import ModelChange, Topics
from shared.logs import get_logger
from shared.states import AliasMove
from shared.version_tags import Tag, metric_tags

log = get_logger(__name__)
EXPERIMENT = "bookcast-training"
FITTED_MODEL = "fitted_model.json"  # the run artifact a refresh starts from
CHALLENGER = "challenger"  # the alias of a risky candidate on trial beside the champion (shared/promotion.py)
HOLDOUT_PLOT = "holdout_forecast.png"


PIP_REQUIREMENTS = ["statsmodels", "numpy", "pandas", "mlflow"]
PYFUNC_EXAMPLE = {"horizon": [13], "interval": [0.8]}


def client(cfg: Settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.mlflow_tracking_uri, registry_uri=cfg.mlflow_tracking_uri)


def _not_found(error: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(error) or "not found" in str(error).lower()


def version_by_alias(cfg: Settings, isbn: str, alias: str | None = None):
    from mlflow.exceptions import MlflowException

    try:
        return client(cfg).get_model_version_by_alias(cfg.model_name(isbn), alias or cfg.serving.alias)
    except MlflowException as error:
        if _not_found(error):
            return None
        raise


@dataclass
class Registration:
    version: str
    run_id: str


def register(cfg: Settings, isbn: str, fitted_model: dict, serving: dict, params: dict, metrics: dict,
             tags: dict[str, str], study: dict | None = None, plot_png: bytes = b"") -> Registration:
    """Log one MLflow run (params, metrics, study, plot, serving forecast, pyfunc model) and
    register it as a new version of the ISBN's model, with its tags (lineage, and every
    metric as ``metric.<name>`` so version lists need no run look-ups).

    Round trips are what registration costs (~15 ms each against a local server): params,
    metrics and tags go in one batch, the version is created with its tags in one call, and
    the pyfunc model is logged from code with a declared signature (no pickling, no
    signature or requirements inference)."""
    import time

    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow_tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    name = cfg.model_name(isbn)
    finite = {k: float(v) for k, v in metrics.items() if v == v and abs(v) != float("inf")}
    mlflow_client = client(cfg)
    with mlflow.start_run(run_name=f"{isbn}-{tags.get(Tag.PIPELINE_RUN_ID, '')}") as run:
        now_ms = int(time.time() * 1000)
        mlflow_client.log_batch(run.info.run_id, metrics=[Metric(k, v, now_ms, 0) for k, v in finite.items()],
                                params=[Param(str(k), str(v)[:6000]) for k, v in params.items()],
                                tags=[RunTag(str(k), str(v)) for k, v in tags.items()])
        mlflow.log_dict(fitted_model, FITTED_MODEL)
        if study:
            mlflow.log_dict(study, "optuna_study.json")
        if plot_png:
            _log_bytes(mlflow_client, run.info.run_id, plot_png, HOLDOUT_PLOT)
        mlflow.log_dict(serving, "serving/forecast.json")
        info = mlflow.pyfunc.log_model(name="model", python_model=pyfunc_source(), model_config={"model": fitted_model},
                                       pip_requirements=PIP_REQUIREMENTS, signature=pyfunc_signature(),
                                       input_example=PYFUNC_EXAMPLE)
    version_tags = {**{str(k): str(v) for k, v in tags.items()}, **metric_tags(metrics)}
    version = _new_version(mlflow_client, name, info.model_uri, info.model_id, version_tags)
    return Registration(version=str(version.version), run_id=run.info.run_id)


def _new_version(mlflow_client, name: str, model_uri: str, model_id: str, tags: dict[str, str]):
    """What ``mlflow.register_model`` does for a logged model, without the messages it prints
    to stderr ("Successfully registered model ...", "Created version ..."): in the cloud every
    stderr line becomes an ERROR entry, and locally they break one JSON object per line.
    The same calls: the model (if new), the version, and the link MLflow's UI shows from the
    logged model (logged just now for this version alone) to it."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = mlflow_client.create_model_version(name, model_uri, tags=tags, model_id=model_id)
    mlflow_client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        [{"name": version.name, "version": version.version}])})
    return version


def _log_bytes(mlflow_client, run_id: str, content: bytes, name: str) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        mlflow_client.log_artifact(run_id, str(path))


def fitted_model(cfg: Settings, run_id: str) -> dict:
    """The fitted model a version was registered with (what a refresh starts from)."""
    from shared import model_store

    return model_store.run_artifact(cfg, run_id, FITTED_MODEL)


def pyfunc_source() -> str:
    """The pyfunc model as code (MLflow's models-from-code): loaded by path, never unpickled."""
    from pathlib import Path

    from shared.forecasting import pyfunc

    return str(Path(pyfunc.__file__))


def pyfunc_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("long", "horizon"), ColSpec("double", "interval", required=False)]),
        outputs=Schema([ColSpec("string", "week"), ColSpec("double", "mean"), ColSpec("double", "lower"),
                        ColSpec("double", "upper")]))


def move_alias(cfg: Settings, store, isbn: str, to_version: str, action: str, reason: str, actor: str,
               correlation_id: str, alias: str | None = None, publish: bool = True) -> str | None:
    """Point ``alias`` at ``to_version``; record and announce the move. Returns the previous
    version. Idempotent: moving to where it already points records nothing new."""
    alias = alias or cfg.serving.alias
    name = cfg.model_name(isbn)
    current = version_by_alias(cfg, isbn, alias)
    previous = current.version if current else None
    if previous == str(to_version):
        return previous
    client(cfg).set_registered_model_alias(name, alias, str(to_version))
    store.record_alias_move(isbn, name, alias, previous, str(to_version), action, reason, actor, correlation_id)
    log.info("alias %s of %s moved %s -> %s (%s)", alias, name, previous, to_version, action,
             extra={"isbn": isbn, "action": action, "reason": reason})
    if publish:
        _announce(cfg, correlation_id, isbn, name, alias, action, previous, str(to_version), reason)
    if alias in (cfg.serving.alias, CHALLENGER):  # both answer forecast requests
        target, forecast, problems = _served(cfg, isbn, alias)
        if problems:
            _revert(cfg, store, isbn, alias, str(to_version), previous, problems, correlation_id)
        elif alias == cfg.serving.alias:
            from shared import champions

            champions.record(cfg, store, isbn, target, forecast)
    return previous


def remove_alias(cfg: Settings, store, isbn: str, alias: str, action: str, reason: str, actor: str,
                 correlation_id: str, only_from: str | None = None) -> str | None:
    """Take ``alias`` off the ISBN's model (only if it points at ``only_from``, if given: a
    newer version may hold it by now); record and announce it like a move (to no version).
    Returns the version it pointed at; idempotent."""
    current = version_by_alias(cfg, isbn, alias)
    if current is None or (only_from is not None and current.version != str(only_from)):
        return None
    name = cfg.model_name(isbn)
    client(cfg).delete_registered_model_alias(name, alias)
    store.record_alias_move(isbn, name, alias, current.version, "", action, reason, actor, correlation_id)
    log.info("alias %s of %s removed from v%s (%s)", alias, name, current.version, action,
             extra={"isbn": isbn, "action": action, "reason": reason})
    _announce(cfg, correlation_id, isbn, name, alias, action, current.version, "", reason)
    return current.version


def _announce(cfg: Settings, correlation_id: str, isbn: str, name: str, alias: str, action: str,
              from_version: str | None, to_version: str, reason: str) -> None:
    from shared.pubsub import publish as publish_event

    publish_event(cfg, Topics.MODEL_CHANGES, ModelChange(correlation_id=correlation_id, isbn=isbn, model_name=name,
                                                    alias=alias, action=action, from_version=from_version,
                                                    to_version=to_version, reason=reason))


def _served(cfg: Settings, isbn: str, alias: str):
    """Forecast the ISBN through the serving path (alias, artifact, bounds) after a move:
    the target, its serving artifact and what is wrong with it."""
    from shared import model_store
    from shared.forecasting.serving import serving_problems

    target = model_store.resolve(cfg, isbn, alias)
    try:
        forecast = model_store.serving_forecast(cfg, target.run_id)
    except model_store.RegistryUnavailable as error:
        return target, None, [f"its serving artifact cannot be fetched: {error}"]
    return target, forecast, serving_problems(forecast)


def _revert(cfg: Settings, store, isbn: str, alias: str, failed: str, previous: str | None, problems: list[str],
            correlation_id: str) -> None:
    """A version that fails validation never keeps serving: the alias goes back to the
    version it replaced (or, for a first version, is removed), audited and announced as a
    revert, which the monitor alerts as critical."""
    name = cfg.model_name(isbn)
    reason = f"v{failed} failed validation after the move: " + "; ".join(problems)
    if previous is not None:
        client(cfg).set_registered_model_alias(name, alias, previous)
    else:
        client(cfg).delete_registered_model_alias(name, alias)
    store.record_alias_move(isbn, name, alias, failed, previous or "", AliasMove.REVERT, reason, "validation", correlation_id)
    log.error("alias %s of %s reverted %s -> %s: %s", alias, name, failed, previous, reason, extra={"isbn": isbn})
    _announce(cfg, correlation_id, isbn, name, alias, AliasMove.REVERT, failed, previous or "", reason)
    if previous is not None and alias == cfg.serving.alias:
        from shared import champions

        champions.index(cfg, store, isbn)


def served_isbns(cfg: Settings) -> list[str]:
    """Every ISBN with a registered model under this deployment's prefix."""
    models = client(cfg).search_registered_models(filter_string=f"name LIKE '{cfg.model_name_prefix}%'")
    return sorted(m.name.removeprefix(cfg.model_name_prefix) for m in models)


def version_spec(version) -> dict | None:
    """The model structure a registered version was trained with (from its tags)."""
    raw = (version.tags or {}).get(Tag.SPEC) if version else None
    return json.loads(raw) if raw else None
