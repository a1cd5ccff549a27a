"""`python -m emulators up|down|status|logs|fire|demo`: the local cloud's command line."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emulators.processes import StartupError
from emulators.stack import Stack

console = Console(width=None if sys.stdout.isatty() else 150)


def stack_from_env() -> Stack:
    return Stack(Path(os.environ.get("BOOKCAST_STATE_DIR", Path(__file__).resolve().parent.parent / ".state")),
                 project=os.environ.get("BOOKCAST_PROJECT_ID", "bookcast-local"))


def show_status(stack: Stack) -> bool:
    table = Table(title=f"bookcast local cloud ({stack.state_dir})")
    for column in ("component", "state", "port", "pid", "log"):
        table.add_column(column)
    status = stack.status()
    for name, (proc, alive) in status.items():
        table.add_row(name, "[green]up[/]" if alive else "[red]down[/]", str(proc.port or "-"), str(proc.pid), proc.log)
    console.print(table if status else "nothing is running")
    return bool(status) and all(alive for _, alive in status.values())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start and wire the whole local cloud")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status")
    logs = sub.add_parser("logs", help="show (or follow) the components' logs, one line per event")
    logs.add_argument("component", nargs="?", help="e.g. trigger-training, monitor, mlflow (default: all)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--raw", action="store_true", help="the lines as written (JSON for Cloud Logging)")
    fire = sub.add_parser("fire", help="fire a scheduler job now")
    fire.add_argument("job")
    sub.add_parser("demo", help="up, upload the sample, follow it through the functions")
    sub.add_parser("env", help="print the exports that point clients (and `bookcast`) at the local cloud")
    args = parser.parse_args()
    stack = stack_from_env()
    try:
        if args.command == "up":
            stack.up(on_step=lambda m: console.print(f"[cyan]»[/] {m}"))
            show_status(stack)
            console.print(f"dashboard: {stack.function_url('dashboard')}   MLflow UI: http://127.0.0.1:{stack.ports.mlflow}"
                          f"   logs: {stack.log_dir}")
        elif args.command == "down":
            stopped = stack.down()
            console.print(f"stopped {', '.join(stopped) or 'nothing'}")
        elif args.command == "status":
            return 0 if show_status(stack) else 1
        elif args.command == "logs":
            from emulators.logview import show

            files = sorted(stack.log_dir.glob(f"{args.component or '*'}.log")) or \
                sorted(stack.log_dir.glob(f"function-{args.component}.log"))
            if not files:
                console.print(f"no log for {args.component!r} in {stack.log_dir}")
                return 1
            return show(files, args.follow, args.raw)
        elif args.command == "fire":
            os.environ.update(stack.client_env())
            return subprocess.call([sys.executable, "-m", "emulators.scheduler", "fire", args.job],
                                   env={**os.environ, **stack.client_env()})
        elif args.command == "env":
            for key, value in stack.operator_env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "demo":
            from emulators.demo import run_demo

            return run_demo(stack, console)
    except StartupError as error:
        console.print(f"[bold red]start-up failed:[/] {escape(str(error))}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
