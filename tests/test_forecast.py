"""The forecast function under functions-framework, against a real MLflow: formats,
alias-following, degraded service, and strict input handling."""
from __future__ import annotations

import io
import time
import uuid

import pytest
import requests

from emulators.processes import free_port, stop
from datetime import date

import numpy as np

from shared import model_store, registry
from shared.forecasting import models
from shared.forecasting.models import ModelSpec
from shared.training.per_isbn import serving_forecast
from shared.config import load_settings
from shared.runstore import RunStore
from tests.helpers import TcpRelay, run_training, sample, write_csv


@pytest.fixture(scope="module")
def served(cloud, mlflow_server, tmp_path_factory):
    """Two ISBNs trained once for the module, and a forecast function serving them
    through a relay to MLflow (so a test can cut MLflow off)."""
    from emulators.wiring import create_topics

    project = f"t-{uuid.uuid4().hex[:12]}"
    tmp = tmp_path_factory.mktemp("served")
    cfg = load_settings("test").model_copy(update={"project_id": project, "mlflow_tracking_uri": mlflow_server,
                                                   "model_name_prefix": f"{project}-", "state_dir": str(tmp)})
    create_topics(cloud.topology, project)
    frame = sample(2, years=3, seed=51)
    run_training(cfg, [write_csv(frame, tmp)])
    relay = TcpRelay(cloud.ports.mlflow)
    port = free_port()
    proc = cloud.start_function("forecast", project=project, port=port, extra_env={
        "BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix, "BOOKCAST_SERVING__ALIAS_TTL_SECONDS": "1",
        "BOOKCAST_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{relay.port}"})
    yield {"cfg": cfg, "url": f"http://127.0.0.1:{port}", "isbns": sorted(frame["isbn"].unique()), "relay": relay,
           "proc": proc}
    stop(proc)
    relay.cut()


def test_json_forecast_from_the_champion(served):
    isbn = served["isbns"][0]
    response = requests.get(served["url"], params={"isbn": isbn, "horizon": 8})
    assert response.status_code == 200
    (answer,) = response.json()["forecasts"]
    champion = registry.version_by_alias(served["cfg"], isbn)
    assert answer["version"] == champion.version and answer["alias"] == "champion"
    assert answer["model_name"] == served["cfg"].model_name(isbn) and answer["stale"] is False
    assert answer["data_end"] == "2026-11-16" and answer["trained_at"]
    rows = answer["forecast"]
    assert [r["week"] for r in rows][:2] == ["2026-11-23", "2026-11-30"] and len(rows) == 8
    assert all(r["lower"] <= r["mean"] <= r["upper"] for r in rows)


def test_post_many_isbns_and_a_narrower_interval_is_narrower(served):
    body = {"isbns": served["isbns"], "horizon": 26, "interval": 0.95}
    wide = requests.post(served["url"], json=body).json()["forecasts"]
    narrow = requests.post(served["url"], json={**body, "interval": 0.5 + 1e-6}).json()["forecasts"]
    assert [a["isbn"] for a in wide] == served["isbns"]
    for w, n in zip(wide[0]["forecast"], narrow[0]["forecast"]):
        assert w["upper"] - w["lower"] >= n["upper"] - n["lower"]


def test_csv_and_png_formats(served):
    isbn = served["isbns"][1]
    csv_response = requests.get(served["url"], params={"isbn": isbn, "horizon": 3, "format": "csv"})
    assert csv_response.headers["Content-Type"].startswith("text/csv")
    lines = csv_response.text.strip().splitlines()
    assert lines[0] == "isbn,version,week,mean,lower,upper" and len(lines) == 4 and lines[1].startswith(isbn)
    png = requests.get(served["url"], params={"isbn": isbn, "format": "png"})
    assert png.headers["Content-Type"] == "image/png"
    import matplotlib.pyplot as plt

    assert plt.imread(io.BytesIO(png.content)).shape[1] > 500


@pytest.mark.parametrize("request_args, status, code", [
    ({"params": {"isbn": "12345"}}, 400, "invalid_isbns"),
    ({"params": {"isbn": "9780306406158"}}, 400, "invalid_isbns"),
    ({"params": {"isbn": "9780306406157", "horizon": "0"}}, 400, "invalid_horizon"),
    ({"params": {"isbn": "9780306406157", "horizon": "105"}}, 400, "invalid_horizon"),
    ({"params": {"isbn": "9780306406157", "horizon": "ten"}}, 400, "invalid_horizon"),
    ({"params": {"isbn": "9780306406157", "format": "xml"}}, 400, "invalid_format"),
    ({"params": {"isbn": "9780306406157", "colour": "red"}}, 400, "unknown_parameter"),
    ({"params": {}}, 400, "missing_isbn"),
    ({"method": "POST", "data": "{not json", "headers": {"Content-Type": "application/json"}}, 400, "malformed_json"),
    ({"method": "POST", "data": "isbns=1", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    ({"method": "POST", "json": {"isbns": ["9780306406157"] * 51}}, 400, "too_many_isbns"),
    ({"method": "PUT", "json": {}}, 405, "method_not_allowed"),
    ({"params": {"isbn": "9780306406157"}}, 404, "unknown_isbn"),
])
def test_bad_input_gets_a_4xx_that_says_what_to_fix(served, request_args, status, code):
    args = dict(request_args)
    response = requests.request(args.pop("method", "GET"), served["url"], **args)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "Traceback" not in response.text
    if code == "unknown_isbn":
        assert error["isbns"] == ["9780306406157"] and "9780306406157" in error["message"]


def test_alias_move_is_served_within_the_ttl_and_registry_outage_serves_stale(served):
    cfg, isbn = served["cfg"], served["isbns"][0]
    before = requests.get(served["url"], params={"isbn": isbn}).json()["forecasts"][0]["version"]
    # A second version to move to: the title's seasonal-naive baseline, as a rollback target.
    served_model = registry.client(cfg).get_model_version(cfg.model_name(isbn), before)
    history = model_store.serving_forecast(cfg, served_model.run_id)
    naive = models.fit(np.asarray(history["history"], float), date.fromisoformat(history["history_start"]),
                       ModelSpec(kind="seasonal_naive")).to_dict()
    other = registry.register(cfg, isbn, naive, serving_forecast(naive), params={}, metrics={},
                              tags={"kind": "baseline"}).version
    registry.move_alias(cfg, RunStore(cfg), isbn, other, "rollback", "test", "pytest", "cid", publish=False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if requests.get(served["url"], params={"isbn": isbn}).json()["forecasts"][0]["version"] == other:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the alias move was not served within 5 s (TTL 1 s)")

    served["relay"].cut()  # MLflow becomes unreachable for the function
    time.sleep(1.2)
    response = requests.get(served["url"], params={"isbn": isbn})
    assert response.status_code == 200 and response.headers["X-Bookcast-Stale"] == "true"
    answer = response.json()["forecasts"][0]
    assert answer["stale"] is True and answer["version"] == other
    cold = requests.get(served["url"], params={"isbn": served["isbns"][1], "format": "csv"})
    assert cold.status_code == 200  # loaded earlier in this module, so still served
    health = requests.get(f"{served['url']}/health").json()
    assert health["registry_reachable"] is False and health["models_cached"] == 2


def test_a_hanging_registry_is_not_waited_on_by_every_request(cloud, served):
    """With MLflow hanging, the first request pays its timeout; the next ones are answered
    from the cache at once (circuit breaker), not after the 3 s registry timeout each."""
    relay = TcpRelay(cloud.ports.mlflow)
    port = free_port()
    proc = cloud.start_function("forecast", project=served["cfg"].project_id, port=port, extra_env={
        "BOOKCAST_MODEL_NAME_PREFIX": served["cfg"].model_name_prefix, "BOOKCAST_SERVING__ALIAS_TTL_SECONDS": "0",
        "BOOKCAST_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{relay.port}"})
    url, isbn = f"http://127.0.0.1:{port}", served["isbns"][1]
    try:
        assert requests.get(url, params={"isbn": isbn}).json()["forecasts"][0]["stale"] is False
        relay.hang()
        first = requests.get(url, params={"isbn": isbn}, timeout=30)
        assert first.status_code == 200 and first.json()["stale"] is True
        seconds = []
        for _ in range(5):
            started = time.monotonic()
            answer = requests.get(url, params={"isbn": isbn}, timeout=30)
            seconds.append(time.monotonic() - started)
            assert answer.status_code == 200 and answer.headers["X-Bookcast-Stale"] == "true"
        assert sorted(seconds)[2] < 0.5, seconds
    finally:
        stop(proc)
        relay.cut()


def test_cold_instance_without_registry_answers_503(cloud, served):
    port = free_port()
    proc = cloud.start_function("forecast", project=served["cfg"].project_id, port=port, extra_env={
        "BOOKCAST_MODEL_NAME_PREFIX": served["cfg"].model_name_prefix,
        "BOOKCAST_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    try:
        response = requests.get(f"http://127.0.0.1:{port}", params={"isbn": served["isbns"][0]})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "registry_unavailable"
        assert requests.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        stop(proc)
