"""The MLflow pyfunc form of a bookcast model, so any MLflow tool (``mlflow models serve``,
``mlflow.pyfunc.load_model``) can forecast from a registered version.

Logged as code (MLflow's models-from-code): MLflow runs this file to get the model object,
so nothing is pickled; the fitted parameters travel in the model config."""
from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import pandas as pd


class SalesForecaster(mlflow.pyfunc.PythonModel):
    """Input rows: ``horizon`` (weeks) and optional ``interval`` (default 0.95)."""

    def load_context(self, context):
        from shared.forecasting.models import FittedModel

        self.model = FittedModel.from_dict(context.model_config["model"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from datetime import timedelta

        from shared.forecasting.models import forecast

        row = model_input.iloc[0]
        horizon = int(row["horizon"])
        level = float(row["interval"]) if "interval" in model_input and pd.notna(row["interval"]) else 0.95
        prediction = forecast(self.model, horizon)
        mean, lower, upper = prediction.bounds(level)
        weeks = [(prediction.start + timedelta(weeks=i)).isoformat() for i in range(horizon)]
        return pd.DataFrame({"week": weeks, "mean": mean, "lower": lower, "upper": upper})


mlflow.models.set_model(SalesForecaster())
