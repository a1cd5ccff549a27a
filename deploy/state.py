"""What is deployed now, for resources no emulator serves: scheduler jobs, bucket
notifications, Pub/Sub IAM policies, the project number, and everything only `gcloud` reads
(functions, Firestore indexes, secrets, service accounts, ...).

``LiveState`` asks the cloud (client libraries where they cover a resource, else
``gcloud ... --format=json``); ``RecordedState`` answers the same questions from recorded
outputs of the equivalent ``gcloud`` reads (the REST resources, as `describe` prints them),
so a plan can be made and tested without an account. Topics, subscriptions and buckets are
always read through their clients: the Pub/Sub emulator and fake-gcs-server serve them.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Protocol


class State(Protocol):
    live: bool

    def gcloud(self, args: list[str]) -> Any | None:
        """The JSON a `gcloud ... --format=json` read prints, or None if it does not exist."""

    def scheduler_job(self, name: str) -> dict | None: ...

    def notifications(self, bucket: str) -> list[dict]: ...

    def pubsub_policy(self, resource: str) -> dict: ...

    def project_number(self) -> str: ...


def recorded_name(args: list[str]) -> str:
    """The file a gcloud read is recorded in: its arguments, slugged."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", " ".join(args)).strip("_") + ".json"


class RecordedState:
    """Recorded outputs of gcloud reads in one directory; an absent file means NOT_FOUND.
    The recordings name the project they were made in (``recorded_project``); a plan for
    another project reads them with its name substituted."""
    live = False

    def __init__(self, directory: Path, project: str, recorded_project: str = "bookcast-staging"):
        self.directory, self.project, self.recorded_project = Path(directory), project, recorded_project

    def gcloud(self, args: list[str]) -> Any | None:
        path = self.directory / recorded_name([a.replace(self.project, self.recorded_project) for a in args])
        if not path.exists():
            return None
        return json.loads(path.read_text().replace(self.recorded_project, self.project))

    def scheduler_job(self, name: str) -> dict | None:
        *_, location, _, job = name.split("/")
        return self.gcloud(["scheduler", "jobs", "describe", job, f"--location={location}"])

    def notifications(self, bucket: str) -> list[dict]:
        return self.gcloud(["storage", "buckets", "notifications", "list", f"gs://{bucket}"]) or []

    def pubsub_policy(self, resource: str) -> dict:
        kind, name = resource.split("/")[2:4]
        return self.gcloud(["pubsub", kind, "get-iam-policy", name]) or {}

    def project_number(self) -> str:
        described = self.gcloud(["projects", "describe", self.project])
        if not described:
            raise LookupError(f"no recorded `gcloud projects describe {self.project}` in {self.directory}")
        return described["projectNumber"]


class LiveState:
    """The cloud itself (needs credentials: `gcloud auth application-default login` or
    workload identity federation in CI)."""
    live = True

    def __init__(self, project: str):
        self.project = project

    def gcloud(self, args: list[str]) -> Any | None:
        result = subprocess.run(["gcloud", f"--project={self.project}", *args, "--format=json"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            if re.search(r"NOT_FOUND|not found|does not exist|404", result.stderr):
                return None
            raise RuntimeError(f"gcloud {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
        return json.loads(result.stdout or "null")

    def scheduler_job(self, name: str) -> dict | None:
        from google.api_core.exceptions import NotFound
        from google.cloud import scheduler_v1

        try:
            return json.loads(scheduler_v1.Job.to_json(scheduler_v1.CloudSchedulerClient().get_job(name=name)))
        except NotFound:
            return None

    def notifications(self, bucket: str) -> list[dict]:
        from google.api_core.exceptions import NotFound
        from google.cloud import storage

        try:
            return [dict(n._properties) for n in storage.Client(project=self.project).bucket(bucket).list_notifications()]
        except NotFound:  # the bucket is created by this apply
            return []

    def pubsub_policy(self, resource: str) -> dict:
        from google.api_core.exceptions import NotFound
        from google.cloud import pubsub_v1
        from google.protobuf.json_format import MessageToDict

        client = pubsub_v1.PublisherClient() if "/topics/" in resource else pubsub_v1.SubscriberClient()
        try:
            return MessageToDict(client.get_iam_policy(request={"resource": resource}))
        except NotFound:  # created by this apply: it holds no bindings yet
            return {}

    def project_number(self) -> str:
        from google.cloud import resourcemanager_v3

        return resourcemanager_v3.ProjectsClient().get_project(name=f"projects/{self.project}").name.split("/")[1]
