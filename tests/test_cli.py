"""The CLI scripts like gcloud: --format json/csv alone on stdout, validated arguments with
exit status 2 and the reason, --version."""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time

import pytest

from shared.identity import mint_local_token
from shared.runstore import RunStore
from tests.helpers import sample
from tests.test_rollback import history, rollback_url  # noqa: F401 (fixtures)


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


def test_every_command_and_option_has_help():
    from shared.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    undocumented = [(name, a.dest) for name, command in [("bookcast", parser), *commands.choices.items()]
                    for a in command._actions if not a.help]
    assert undocumented == [] and "exit status" in parser.format_help()


def test_version(cfg):
    assert bookcast(cfg, "--version").stdout.startswith("bookcast ")


@pytest.fixture
def cli(cfg, monkeypatch, capsys):
    """``bookcast`` in this process, on this test's project: (exit status, stdout, stderr)."""
    from shared.cli import main

    for key, value in {"BOOKCAST_PROJECT_ID": cfg.project_id, "BOOKCAST_PROFILE": "test",
                       "BOOKCAST_MLFLOW_TRACKING_URI": cfg.mlflow_tracking_uri}.items():
        monkeypatch.setenv(key, value)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # what fixtures printed is not the command's
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err
    return run


@pytest.mark.usefixtures("mlflow_server")
def test_every_read_command_round_trips_through_json(cfg, cli):
    store = RunStore(cfg)
    run_id = store.create_run(["9780306406157"], {"kind": "forced"}, "cid-json", "local")
    store.record_decision("9780306406157", "train", ["no model yet"], {}, {"kind": "request"}, "cid-json", run_id=run_id)
    store.record_alias_move("9780306406157", "m", "champion", None, "1", "promote", "passed", "pytest", "cid-json")
    reads = {("runs",): list, ("run", run_id): dict, ("decisions",): list, ("uploads",): list,
             ("aliases", "9780306406157"): list, ("trace", "cid-json"): list, ("thresholds",): dict, ("cost",): dict}
    for args, shape in reads.items():
        status, out, _ = cli(*args, "--format", "json")
        assert status == 0 and isinstance(json.loads(out), shape), args
    assert [s["step"] for s in json.loads(cli("trace", "cid-json", "--format", "json")[1])] == \
        ["run", "decision", "alias"]
    status, out, _ = cli("run", run_id, "--format", "csv")
    assert [r["isbn"] for r in csv.DictReader(io.StringIO(out))] == ["9780306406157"]


@pytest.mark.parametrize("listening", [False, True], ids=["port closed", "server silent"])
def test_an_emulator_that_is_down_fails_fast_naming_it_and_the_fix(cfg, listening):
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    port = silent.getsockname()[1]
    if not listening:
        silent.close()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "shared.cli", "runs"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{port}"})
    silent.close()
    assert time.monotonic() - started < 10
    assert result.returncode == 3 and result.stdout == ""
    assert f"Firestore emulator at 127.0.0.1:{port} is not answering" in result.stderr and "make up" in result.stderr


def test_a_missing_file_or_an_unknown_profile_is_a_message_not_a_traceback(cfg, cli, tmp_path):
    status, _, err = cli("train", "--file", str(tmp_path / "missing.csv"))
    assert status == 2 and "missing.csv" in err and "Traceback" not in err
    status, _, err = cli("--profile", "bogus", "cost")
    assert status == 2 and "unknown profile 'bogus'" in err


@pytest.mark.usefixtures("mlflow_server")
def test_request_wait_prints_the_outcome(cfg, cli, probe, trigger_function):
    status, out, err = cli("request", "--isbn", "978-0-306-40615-7", "--wait", "--timeout", "60", "--format", "json")
    assert status == 0 and json.loads(out) == [] and "correlation id request-" in err  # no data: nothing to train

    frame = sample(1, years=2)
    isbn = frame["isbn"].iloc[0]
    RunStore(cfg).col("series").document(isbn).set(
        {"isbn": isbn, "sources": ["test"], "weeks": {str(w): int(u) for w, u in zip(frame["week"], frame["units"])}})
    status, out, _ = cli("request", "--isbn", isbn, "--wait", "--timeout", "600", "--format", "json")
    (outcome,) = json.loads(out)  # decided, trained by a local job, and its result
    assert status == 0 and outcome["action"] == "train" and outcome["status"] in ("promoted", "baseline")
    assert outcome["version"] and outcome["MASE"] is not None


def test_request_wait_gives_up_at_its_timeout(cfg, cli, probe):
    status, out, err = cli("request", "--wait", "--timeout", "2")  # nobody consumes training-requests here
    assert status == 4 and "no outcome within 2 s" in err and "bookcast trace request-" in err


@pytest.mark.usefixtures("mlflow_server")
def test_rollback_calls_the_function_and_every_line_carries_its_audit_id(cfg, cli, history, rollback_url, cloud):
    import requests

    from tests.test_rollback import ISBN

    _, v1, _, v3 = history
    status, out, err = cli("rollback", ISBN, "--reason", "bad week", "--url", rollback_url,
                           "--correlation-id", "cid-cli-rollback", "--format", "json")
    (result,) = json.loads(out)
    assert status == 0 and (result["from_version"], result["to_version"]) == (v3, v1)
    audit_id = err.split("audit id ")[1].split(",")[0]
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    requests.post(rollback_url, json={}, headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01",
                                                  "Authorization": f"Bearer {mint_local_token(cfg, rollback_url)}"})
    lines = [json.loads(line) for line in
             (cloud.log_dir / f"function-rollback-{cfg.project_id}.log").read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("correlation_id") == "cid-cli-rollback"]
    assert len(mine) >= 3 and all(line["audit_id"] == audit_id for line in mine)  # moves, audit, the request
    (request_line,) = [line for line in mine if "httpRequest" in line]
    assert request_line["httpRequest"]["status"] == 200 and request_line["httpRequest"]["requestMethod"] == "POST"
    (traced,) = [line for line in lines if line.get("logging.googleapis.com/trace")]
    assert traced["logging.googleapis.com/trace"] == f"projects/{cfg.project_id}/traces/{trace}"
    assert traced["logging.googleapis.com/spanId"] == "00f067aa0ba902b7" and traced["httpRequest"]["status"] == 400
    assert all(line["logging.googleapis.com/sourceLocation"]["line"] for line in lines)


def test_logs_are_plain_lines_on_a_terminal_and_json_in_a_pipe(cfg, probe):
    import pty

    env = {**os.environ, "BOOKCAST_PROJECT_ID": cfg.project_id, "BOOKCAST_PROFILE": "test"}
    command = [sys.executable, "-m", "shared.cli", "request", "--format", "json"]
    piped = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    (line,) = [json.loads(line) for line in piped.stderr.splitlines() if line.startswith("{")]
    assert line["message"] == "published training.requested to training-requests"
    terminal, other_end = pty.openpty()
    subprocess.run(command, stdout=subprocess.PIPE, stderr=other_end, env=env, timeout=60, check=True)
    os.close(other_end)
    shown = os.read(terminal, 65536).decode()
    os.close(terminal)
    assert " INFO    published training.requested to training-requests (request-" in shown and "{" not in shown
