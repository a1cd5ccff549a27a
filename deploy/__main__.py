"""Creates the topology of deploy/topology.yaml on GCP with gcloud: the same topics, bucket
notification, push subscriptions (with retry and dead-letter policies), functions,
scheduler jobs and Firestore indexes that `emulators up` builds locally.

    python -m deploy --project P [--region R] [--apply]

Without --apply it prints every command (a dry run); with --apply it runs them in order and
stops at the first failure. Functions are deployed as 2nd gen HTTP functions and fed by
push subscriptions with OIDC tokens, exactly as locally, where functions-framework turns a
push into a CloudEvent.

Also needed once per project, outside this script: the Pub/Sub service agent
(service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com) must be allowed to publish to
the dead-letter topic and to subscribe to each subscription.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from shared.topology import Function, Topology, load

ROOT = Path(__file__).resolve().parent.parent


def function_url(project: str, region: str, name: str) -> str:
    return f"https://{region}-{project}.cloudfunctions.net/{name}"


def stage(build_dir: Path, fn: Function) -> Path:
    """A function's deployable source: its main.py, the shared/ library, and requirements
    pinned to the lock's versions but limited to what the function imports."""
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


def commands(topology: Topology, project: str, region: str, build_dir: Path, mlflow_uri: str,
             stage_sources: bool = True) -> list[list[str]]:
    from shared.config import load_settings
    from shared.jobs import code_version

    version = code_version(load_settings())
    invoker = f"bookcast-invoker@{project}.iam.gserviceaccount.com"
    runtime_sa = f"bookcast-runtime@{project}.iam.gserviceaccount.com"
    g = ["gcloud", f"--project={project}"]
    out: list[list[str]] = [
        g + ["services", "enable", "cloudfunctions.googleapis.com", "run.googleapis.com", "pubsub.googleapis.com",
             "cloudscheduler.googleapis.com", "firestore.googleapis.com", "aiplatform.googleapis.com",
             "cloudbuild.googleapis.com", "artifactregistry.googleapis.com"],
        g + ["iam", "service-accounts", "create", "bookcast-invoker", "--display-name=bookcast push invoker"],
        g + ["iam", "service-accounts", "create", "bookcast-runtime", "--display-name=bookcast functions"],
    ]
    image = f"{region}-docker.pkg.dev/{project}/bookcast/trainer:latest"
    out += [g + ["artifacts", "repositories", "create", "bookcast", "--repository-format=docker", f"--location={region}"],
            g + ["builds", "submit", str(ROOT), f"--tag={image}"]]
    out += [g + ["pubsub", "topics", "create", t.name] for t in topology.topics]
    for bucket in topology.buckets:
        out.append(g + ["storage", "buckets", "create", f"gs://{project}-{bucket.name}", f"--location={region}",
                        "--uniform-bucket-level-access"])
        for n in bucket.notifications:
            out.append(g + ["storage", "buckets", "notifications", "create", f"gs://{project}-{bucket.name}",
                            f"--topic={n.topic}", "--payload-format=json",
                            *[f"--event-types={e}" for e in n.event_types],
                            *([f"--object-prefix={n.object_prefix}"] if n.object_prefix else [])])
    for fn in topology.functions:
        source = stage(build_dir, fn) if stage_sources else build_dir / Path(fn.source).name
        env = {"BOOKCAST_PROFILE": "production", "BOOKCAST_PROJECT_ID": project, "BOOKCAST_VERTEX__PROJECT": project,
               "BOOKCAST_VERTEX__REGION": region, "BOOKCAST_VERTEX__IMAGE": image,
               "BOOKCAST_DATA_BUCKET": f"{project}-{topology.buckets[0].name}", "BOOKCAST_MLFLOW_TRACKING_URI": mlflow_uri,
               # A function has no git checkout: the version deployed is stamped here, for lineage tags.
               "BOOKCAST_CODE_VERSION": version}
        out.append(g + ["functions", "deploy", fn.name, "--gen2", "--runtime=python311", f"--region={region}",
                        f"--source={source}", f"--entry-point={fn.entry_point}", "--trigger-http",
                        "--no-allow-unauthenticated", f"--memory={fn.memory}", f"--timeout={fn.timeout_seconds}s",
                        f"--service-account={runtime_sa}", f"--concurrency={fn.concurrency}",
                        *([f"--cpu={fn.cpu}"] if fn.cpu else []),
                        "--set-env-vars=" + ",".join(f"{k}={v}" for k, v in env.items())])
        out.append(g + ["functions", "add-invoker-policy-binding", fn.name, f"--region={region}",
                        f"--member=serviceAccount:{invoker}"])
    d = topology.defaults
    for sub in topology.subscriptions:
        command = g + ["pubsub", "subscriptions", "create", sub.name, f"--topic={sub.topic}"]
        if sub.function:
            endpoint = f"{function_url(project, region, sub.function)}/projects/{project}/topics/{sub.topic}"
            command += [f"--push-endpoint={endpoint}", f"--push-auth-service-account={invoker}"]
        command += [f"--ack-deadline={d.ack_deadline_seconds}", f"--min-retry-delay={d.min_backoff_seconds}s",
                    f"--max-retry-delay={d.max_backoff_seconds}s"]
        if sub.dead_letter_to(d):
            command += [f"--dead-letter-topic={sub.dead_letter_to(d)}", f"--max-delivery-attempts={d.max_delivery_attempts}"]
        out.append(command)
    for job in topology.scheduler_jobs:
        out.append(g + ["scheduler", "jobs", "create", "pubsub", job.name, f"--location={region}",
                        f"--schedule={job.schedule}", f"--time-zone={job.time_zone}", f"--topic={job.topic}",
                        f"--message-body={json.dumps(job.data, separators=(',', ':'))}",
                        "--attributes=" + ",".join(f"{k}={v}" for k, v in job.attributes.items())])
    for index in json.loads((ROOT / "deploy" / "firestore.indexes.json").read_text())["indexes"]:
        fields = [f"--field-config=field-path={f['fieldPath']},order={f['order'].lower()}" for f in index["fields"]]
        out.append(g + ["firestore", "indexes", "composite", "create", f"--collection-group={index['collectionGroup']}",
                        *fields])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", default="europe-west1")
    parser.add_argument("--mlflow-uri", required=True, help="the MLflow tracking server the functions use")
    parser.add_argument("--build-dir", type=Path, default=ROOT / ".state" / "deploy")
    parser.add_argument("--apply", action="store_true", help="run the commands (default: print them)")
    args = parser.parse_args()
    for command in commands(load(), args.project, args.region, args.build_dir, args.mlflow_uri):
        print(shlex.join(command))
        if args.apply and subprocess.call(command) != 0:
            print(f"failed: {shlex.join(command)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
