"""After a deploy: is everything there as planned, and does the forecast function answer?

    python -m deploy verify --project P [--region R] [--isbn ISBN ...]

Exits non-zero with the reasons when the plan is not empty, the forecast function's health
is not ok or its registry unreachable, or a named ISBN gets no forecast. CI rolls back then.
"""
from __future__ import annotations

import requests

from deploy.plan import Plan
from shared.states import HealthStatus


def forecast_problems(url: str, token: str | None, isbns: list[str]) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    problems = []
    try:
        health = requests.get(f"{url}/health", headers=headers, timeout=60)
    except requests.RequestException as error:
        return [f"forecast function unreachable at {url}: {error}"]
    if health.status_code != 200:
        return [f"forecast /health answered {health.status_code}: {health.text[:200]}"]
    body = health.json()
    if body.get("status") != HealthStatus.OK:
        problems.append(f"forecast /health status {body.get('status')!r}")
    if not body.get("registry_reachable"):
        problems.append("the forecast function cannot reach the MLflow registry")
    refused = requests.get(url, params={"isbn": "123"}, headers=headers, timeout=60)
    if refused.status_code != 400:  # proves the deployed code, not just a container, answers
        problems.append(f"forecast answered {refused.status_code} to an invalid ISBN instead of 400")
    for isbn in isbns:
        answer = requests.get(url, params={"isbn": isbn, "horizon": 4}, headers=headers, timeout=60)
        if answer.status_code != 200 or len(answer.json().get("forecasts", [{}])[0].get("forecast", [])) != 4:
            problems.append(f"no forecast for {isbn}: {answer.status_code} {answer.text[:200]}")
    return problems


def verify(plan: Plan, forecast_url: str, token: str | None, isbns: list[str]) -> list[str]:
    problems = [f"{c.kind} {c.name}: {c.action} pending" for c in plan.pending]
    return problems + forecast_problems(forecast_url, token, isbns)


def id_token(audience: str) -> str:
    """An ID token for the forecast function from the deployer's credentials (a service
    account, or workload identity federation impersonating one)."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
