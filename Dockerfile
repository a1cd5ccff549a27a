# The training job's image for the Vertex AI launcher: the same worker entry point the
# local launcher runs. Built by `python -m deploy` with Cloud Build from the context
# deploy/staging.py stages (this file, shared/, and requirements.txt: the worker's packages
# at the lock's versions). No Docker engine here: the context's requirements are installed
# and imported in a fresh environment by the tests instead.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 ZENML_ANALYTICS_OPT_IN=false ZENML_CAPTURE_PRINTS=false \
    ZENML_CONFIG_PATH=/tmp/zenml BOOKCAST_STATE_DIR=/tmp/bookcast
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY shared/ shared/
ENTRYPOINT ["python", "-m", "shared.training.worker"]
