"""A function's deployable source: its main.py, the shared/ library, and requirements
pinned to the lock's versions but limited to what the function imports (the topology's
``packages``): 42 packages for forecast instead of the full set."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from shared.topology import Function

ROOT = Path(__file__).resolve().parent.parent


def stage(build_dir: Path, fn: Function) -> Path:
    target = build_dir / Path(fn.source).name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy(ROOT / fn.source / "main.py", target / "main.py")
    shutil.copytree(ROOT / "shared", target / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    if not fn.packages:
        shutil.copy(ROOT / "requirements.lock", target / "requirements.txt")
        return target
    (target / "requirements.in").write_text("\n".join(fn.packages) + "\n")
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "pip", "compile", str(target / "requirements.in"), "-c", str(ROOT / "requirements.lock"),
                    "--python-version", "3.11", "--quiet", "--no-header", "-o", str(target / "requirements.txt")],
                   check=True)
    return target
