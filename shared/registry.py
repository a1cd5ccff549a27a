"""The MLflow model registry: one registered model per ISBN, serving by alias.

Promotion and rollback move the ``champion`` alias; nothing is ever copied. MLflow keeps no
history of alias moves, so every move is also written to Firestore (RunStore) and announced
on the model-changes topic.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from shared.config import Settings
from shared.events import ModelChange
from shared.logs import get_logger

log = get_logger(__name__)
EXPERIMENT = "bookcast-training"
PIP_REQUIREMENTS = ["statsmodels", "numpy", "pandas", "mlflow"]


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
             tags: dict[str, str], study: dict | None = None, figure=None) -> Registration:
    """Log one MLflow run (params, metrics, study, plot, serving forecast, pyfunc model) and
    register it as a new version of the ISBN's model."""
    import mlflow

    from shared.forecasting.pyfunc import SalesForecaster

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow_tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    name = cfg.model_name(isbn)
    with mlflow.start_run(run_name=f"{isbn}-{tags.get('pipeline_run_id', '')}") as run:
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v and abs(v) != float("inf")})
        mlflow.set_tags(tags)
        if study:
            mlflow.log_dict(study, "optuna_study.json")
        if figure is not None:
            mlflow.log_figure(figure, "holdout_forecast.png")
        mlflow.log_dict(serving, "serving/forecast.json")
        info = mlflow.pyfunc.log_model(name="model", python_model=SalesForecaster(),
                                       model_config={"model": fitted_model}, pip_requirements=PIP_REQUIREMENTS,
                                       registered_model_name=name)
    version = str(info.registered_model_version)
    mlflow_client = client(cfg)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value))
    for key, value in metrics.items():
        mlflow_client.set_model_version_tag(name, version, f"metric.{key}", f"{value:.6g}")
    return Registration(version=version, run_id=run.info.run_id)


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
        from shared.pubsub import publish as publish_event

        publish_event(cfg, "model-changes", ModelChange(
            correlation_id=correlation_id, isbn=isbn, model_name=name, alias=alias, action=action,
            from_version=previous, to_version=str(to_version), reason=reason))
    return previous


def served_isbns(cfg: Settings) -> list[str]:
    """Every ISBN with a registered model under this deployment's prefix."""
    models = client(cfg).search_registered_models(filter_string=f"name LIKE '{cfg.model_name_prefix}%'")
    return sorted(m.name.removeprefix(cfg.model_name_prefix) for m in models)


def version_spec(version) -> dict | None:
    """The model structure a registered version was trained with (from its tags)."""
    raw = (version.tags or {}).get("spec") if version else None
    return json.loads(raw) if raw else None
