"""`make logs`: the components' logs as people read them, one line per event (time,
component, severity, message, correlation id), from the JSON lines Cloud Logging reads;
`--raw` shows the lines as written. Lines that are not JSON (the emulators' own) pass as
they are."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

HEADER = re.compile(r"^==> (.+) <==$")  # tail's marker when it switches files
COLOURS = {"DEBUG": "dim", "INFO": "cyan", "WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red"}


def readable(line: str, component: str) -> str:
    """One log line as rich markup: JSON entries laid out, anything else escaped as is."""
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or "message" not in entry:
        return f"[dim]{' ' * 12} {component:>17}[/] {escape(line)}"
    severity = entry.get("severity", "DEFAULT")
    cid = entry.get("correlation_id")
    return (f"[dim]{str(entry.get('time', ''))[11:23]:<12}[/] {component:>17} "
            f"[{COLOURS.get(severity, 'white')}]{severity:<7}[/] {escape(str(entry['message']))}"
            + (f" [dim]({escape(cid)})[/]" if cid else ""))


def show(files: list[Path], follow: bool, raw: bool, lines: int = 50) -> int:
    command = ["tail", "-n", str(lines), *(["-F"] if follow else []), *map(str, files)]
    if raw:
        return subprocess.call(command)
    console = Console(highlight=False, soft_wrap=True)
    component = files[0].stem.removeprefix("function-")
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, errors="replace") as tail:
        try:
            for line in tail.stdout:
                line = line.rstrip("\n")
                if header := HEADER.match(line):
                    component = Path(header[1]).stem.removeprefix("function-")
                elif line:
                    console.print(readable(line, component))
        except KeyboardInterrupt:
            tail.terminate()
        except BrokenPipeError:  # `make logs | head`
            tail.terminate()
            sys.stderr.close()
    return 0
