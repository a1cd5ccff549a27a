"""Deployable sources, each with requirements pinned to the lock's versions but limited to
what it imports (the topology's ``packages``): a function's main.py and the shared/
library (42 packages for forecast instead of the full set), and the trainer image's build
context (Dockerfile and shared/: no test, browser, benchmark or deploy tooling in it)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from shared.topology import Function, Trainer

ROOT = Path(__file__).resolve().parent.parent


def stage(build_dir: Path, fn: Function) -> Path:
    target = _fresh(build_dir / Path(fn.source).name)
    shutil.copy(ROOT / fn.source / "main.py", target / "main.py")
    if not fn.packages:
        shutil.copy(ROOT / "requirements.lock", target / "requirements.txt")
        return target
    _pin(target, fn.packages)
    return target


def stage_trainer(build_dir: Path, trainer: Trainer) -> Path:
    target = _fresh(build_dir / "trainer")
    shutil.copy(ROOT / "Dockerfile", target / "Dockerfile")
    _pin(target, trainer.packages)
    return target


def _fresh(target: Path) -> Path:
    """An empty directory with the shared/ library in it."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copytree(ROOT / "shared", target / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _pin(target: Path, packages: list[str]) -> None:
    (target / "requirements.in").write_text("\n".join(packages) + "\n")
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "pip", "compile", str(target / "requirements.in"), "-c", str(ROOT / "requirements.lock"),
                    "--python-version", "3.11", "--quiet", "--no-header", "-o", str(target / "requirements.txt")],
                   check=True)
