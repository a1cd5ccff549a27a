"""`bookcast cost`: the estimate follows the topology, the catalogue and the assumed prices."""
from __future__ import annotations

import json

import pytest

from shared import cost
from shared.cli import main as cli
from shared.config import load_settings
from shared.topology import load


def test_schedules_are_counted_from_their_cron():
    assert cost.runs_per_month("*/15 * * * *") == pytest.approx(96 * 30.44)
    assert cost.runs_per_month("0 5 * * 1") == pytest.approx(30.44 / 7)


def test_training_cost_follows_the_measured_compute_and_the_assumed_price():
    cfg = load_settings("production")
    catalogue = cost.Catalogue(isbns=10_000, retrain_share=0.2, retrain_seconds=2.0, refresh_seconds=0.1)
    vertex = next(line for line in cost.estimate(cfg, load(), catalogue) if line.item.startswith("Vertex"))
    weekly_cpu = 10_000 * (0.2 * 2.0 + 0.8 * 0.1)
    expected_hours = weekly_cpu * cost.WEEKS_PER_MONTH / 8 / 3600 + cost.WEEKS_PER_MONTH * cfg.cost.job_startup_hours
    assert vertex.quantity == pytest.approx(expected_hours)
    assert vertex.monthly == pytest.approx(expected_hours * cfg.cost.training_node_hour)


def test_a_bigger_catalogue_costs_more_and_every_line_states_its_price(capsys):
    small = {l.item.split(" (")[0]: l for l in cost.estimate(load_settings(), load(), cost.Catalogue(isbns=1_000))}
    large = {l.item.split(" (")[0]: l for l in cost.estimate(load_settings(), load(), cost.Catalogue(isbns=10_000))}
    assert large["Firestore document reads"].monthly > 9 * small["Firestore document reads"].monthly
    assert all(line.unit and line.unit_price > 0 for line in large.values())
    assert cli(["cost", "--isbns", "10000", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["monthly_usd"] == pytest.approx(sum(l.monthly for l in large.values()), abs=0.01)
    assert printed["prices"]["training_node_hour"] == load_settings().cost.training_node_hour
