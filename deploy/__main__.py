"""Plans, applies or tears down the topology of deploy/topology.yaml on a GCP project, and
verifies a deploy.

    python -m deploy --project P [--region R] [--mlflow-uri U]            # plan: what exists, what would change
    python -m deploy --project P ... --apply                               # apply the plan (idempotent)
    python -m deploy --project P --teardown [--apply]                      # plan (then run) removing it all
    python -m deploy verify --project P [--isbn I]                         # after a deploy: CI's check
    python -m deploy --project P --recorded DIR                            # plan from recorded gcloud reads

Functions are 2nd gen HTTP functions fed by push subscriptions with OIDC tokens, exactly as
locally, where functions-framework turns a push into a CloudEvent. See deploy/plan.py.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from deploy.plan import ROOT, Plan, Target, apply, plan
from deploy.state import LiveState, RecordedState, State


def target_and_state(args) -> tuple[Target, State]:
    from shared.config import load_settings
    from shared.jobs import code_version
    from shared.topology import load

    state = RecordedState(args.recorded, args.project) if args.recorded else LiveState(args.project)
    target = Target(project=args.project, region=args.region, mlflow_uri=args.mlflow_uri, topology=load(),
                    code_version=code_version(load_settings()), build_dir=args.build_dir,
                    project_number=args.project_number or state.project_number())
    return target, state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["plan", "verify"], default="plan")
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", default="europe-west1")
    parser.add_argument("--mlflow-uri", default=os.environ.get("BOOKCAST_MLFLOW_TRACKING_URI", ""),
                        help="the MLflow tracking server the functions use (default: BOOKCAST_MLFLOW_TRACKING_URI)")
    parser.add_argument("--project-number", help="skip the look-up (Resource Manager)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / ".state" / "deploy")
    parser.add_argument("--recorded", type=Path, help="read the state from recorded `gcloud ... --format=json` "
                                                      "outputs in this directory instead of the cloud")
    parser.add_argument("--teardown", action="store_true", help="plan removing everything the topology creates")
    parser.add_argument("--apply", action="store_true", help="run the plan")
    parser.add_argument("--forecast-url", help="verify: the forecast function's URL (default: from the project)")
    parser.add_argument("--id-token", default=os.environ.get("BOOKCAST_ID_TOKEN"),
                        help="verify: token for the forecast function (default: from the deployer's credentials)")
    parser.add_argument("--isbn", action="append", default=[], help="verify: these ISBNs must get a forecast")
    args = parser.parse_args(argv)
    if not args.mlflow_uri and not args.teardown:
        parser.error("--mlflow-uri (or BOOKCAST_MLFLOW_TRACKING_URI) is required")
    target, state = target_and_state(args)
    started = time.perf_counter()
    planned: Plan = plan(target, state, teardown=args.teardown)
    print(planned.render())
    print(f"planned in {time.perf_counter() - started:.2f} s", file=sys.stderr)
    if args.command == "verify":
        from deploy.verify import id_token, verify

        url = args.forecast_url or target.function_url("forecast")
        token = args.id_token or (id_token(url) if state.live and url.startswith("https://") else None)
        problems = verify(planned, url, token, args.isbn)
        for problem in problems:
            print(f"verify: {problem}", file=sys.stderr)
        print("verify: ok" if not problems else f"verify: {len(problems)} problem(s)", file=sys.stderr)
        return 1 if problems else 0
    if args.apply:
        from google.api_core.exceptions import GoogleAPIError

        try:
            apply(planned)
        except (RuntimeError, ValueError, subprocess.CalledProcessError, GoogleAPIError) as error:
            print(f"apply stopped: {error}", file=sys.stderr)
            return 1
        print(f"applied {len(planned.pending)} change(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
