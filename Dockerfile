# The training job's image for the Vertex AI launcher: the same worker entry point the
# local launcher runs. Built by `python -m deploy` with Cloud Build (no Docker engine here,
# so it is not built or tested locally).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 ZENML_ANALYTICS_OPT_IN=false ZENML_CAPTURE_PRINTS=false \
    ZENML_CONFIG_PATH=/tmp/zenml BOOKCAST_STATE_DIR=/tmp/bookcast
WORKDIR /app
COPY requirements.lock .
RUN pip install --no-cache-dir -r requirements.lock
COPY shared/ shared/
ENTRYPOINT ["python", "-m", "shared.training.worker"]
