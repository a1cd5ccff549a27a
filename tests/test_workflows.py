"""The GitHub Actions workflows are checked by actionlint (with shellcheck on their `run:`
scripts) as part of the test command: a finding fails the suite."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    # shellcheck comes from the same environment; actionlint finds it on PATH
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "actionlint"), "-no-color", *map(str, files)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_workflows_have_no_actionlint_findings():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"tests.yml", "deploy.yml", "deploy-environment.yml"}
    result = actionlint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_reports_what_it_should(tmp_path):
    """The check can fail: an unknown job dependency and an unquoted shell variable."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    needs: nowhere\n"
                      "    steps:\n      - run: echo $GITHUB_SHA > $HOME/x\n")
    result = actionlint(broken)
    assert result.returncode == 1
    assert "nowhere" in result.stdout and "shellcheck" in result.stdout


def test_production_waits_for_staging_and_its_reviewers():
    import yaml

    deploy = yaml.safe_load((WORKFLOWS / "deploy.yml").read_text())
    jobs = deploy["jobs"]
    assert jobs["staging"]["needs"] == "tests" and jobs["production"]["needs"] == "staging"
    assert jobs["production"]["with"]["environment"] == "production"  # its required reviewers gate the job
    steps = yaml.safe_load((WORKFLOWS / "deploy-environment.yml").read_text())["jobs"]["deploy"]["steps"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    rollback = steps[names.index("Roll back to the previously deployed commit")]
    assert names.index("Apply") < names.index(next(n for n in names if n.startswith("Verify"))) < names.index(
        rollback["name"]) and rollback["if"].startswith("failure()")
