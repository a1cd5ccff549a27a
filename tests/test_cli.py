"""The CLI scripts like gcloud: --format json/csv alone on stdout, validated arguments with
exit status 2 and the reason, --version."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from shared.runstore import RunStore


def bookcast(cfg, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BOOKCAST_PROJECT_ID": cfg.project_id, "BOOKCAST_PROFILE": "test"}
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_read_commands_print_json_and_csv_alone_on_stdout(cfg):
    store = RunStore(cfg)
    run_id = store.create_run(["9780306406157"], {"kind": "forced"}, "cid-cli", "local")
    store.record_decision("9780306406157", "refresh", ["1 new week(s)"], {}, {"kind": "upload"}, "cid-cli", run_id=run_id)

    runs = json.loads(bookcast(cfg, "runs", "--format", "json").stdout)
    assert [(r["run"], r["isbns"], r["status"]) for r in runs] == [(run_id, ["9780306406157"], "queued")]
    decided = bookcast(cfg, "decisions", "--isbn", "978-0-306-40615-7", "--format", "csv")
    (row,) = list(csv.DictReader(io.StringIO(decided.stdout)))
    assert row["action"] == "refresh" and row["run"] == run_id and json.loads(row["reasons"]) == ["1 new week(s)"]
    assert "refresh" in bookcast(cfg, "decisions").stdout  # the table for people


@pytest.mark.parametrize("args, reason", [
    (["decisions", "--isbn", "978-0-306-40615-8"], "bad check digit (expected 7)"),
    (["aliases", "97803064"], "is not an ISBN-13"),
    (["runs", "--status", "bogus"], "invalid choice: 'bogus'"),
])
def test_bad_arguments_exit_2_with_the_reason(cfg, args, reason):
    result = bookcast(cfg, *args)
    assert result.returncode == 2 and reason in result.stderr and result.stdout == ""


def test_version(cfg):
    assert bookcast(cfg, "--version").stdout.startswith("bookcast ")
