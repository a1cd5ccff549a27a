"""Plan, apply and tear down the topology of deploy/topology.yaml on a GCP project.

A plan reads what exists and compares it with what the topology wants, resource by
resource: unchanged, create, update (only the fields that differ, with an update mask) or,
for a teardown, delete. Applying runs the pending changes in dependency order; since every
change was derived from a read, applying twice changes nothing the second time.

Topics, subscriptions, dead-letter IAM, buckets, bucket notifications and scheduler jobs go
through Google's client libraries (so the same code runs against the Pub/Sub emulator and
fake-gcs-server); what only gcloud can do (functions, Firestore indexes, secrets, service
accounts, the trainer image, project IAM) is read with `gcloud ... describe --format=json`
and changed with the exact gcloud command the plan shows.
"""
from __future__ import annotations

import json
import os
import secrets as random_secrets
import shlex
import subprocess
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Literal

from deploy.state import State
from shared.topology import Function, Topology

ROOT = Path(__file__).resolve().parent.parent
INDEXES_FILE = ROOT / "deploy" / "firestore.indexes.json"
Action = Literal["unchanged", "create", "update", "replace", "delete"]
SYMBOLS = {"unchanged": "=", "create": "+", "update": "~", "replace": "±", "delete": "-"}
APIS = ("cloudfunctions.googleapis.com", "run.googleapis.com", "pubsub.googleapis.com", "cloudscheduler.googleapis.com",
        "firestore.googleapis.com", "aiplatform.googleapis.com", "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com", "secretmanager.googleapis.com", "eventarc.googleapis.com")
SIGNING_SECRET = "bookcast-event-signing-key"


@dataclass(frozen=True)
class Secret:
    """A secret in Secret Manager, mounted into functions as an environment variable.
    ``generated``: the deploy creates the value; otherwise it comes from the deployer's
    environment variable of the same name (a CI secret), and without one the secret is
    neither created nor mounted."""
    name: str
    variable: str
    functions: tuple[str, ...]
    generated: bool = False


SECRETS = (
    Secret(SIGNING_SECRET, "BOOKCAST_EVENT_SIGNING_KEY", ("trigger-training", "monitor", "forecast", "rollback"),
           generated=True),
    Secret("bookcast-slack-webhook-url", "BOOKCAST_ALERTS__SLACK_WEBHOOK_URL", ("monitor",)),
    Secret("bookcast-smtp-host", "BOOKCAST_ALERTS__SMTP_HOST", ("monitor",)),
)
RUNTIME_ROLES = ("roles/datastore.user", "roles/pubsub.publisher", "roles/aiplatform.user", "roles/storage.objectAdmin",
                 "roles/logging.logWriter")
TRAINING_ROLES = ("roles/datastore.user", "roles/pubsub.publisher", "roles/storage.objectAdmin",
                  "roles/logging.logWriter")


GCLOUD_CLIENT_AUDIENCE = "32555940559.apps.googleusercontent.com"  # the Google Cloud SDK's OAuth client id


@dataclass
class Target:
    project: str
    region: str
    mlflow_uri: str
    topology: Topology
    code_version: str
    build_dir: Path
    project_number: str

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    def function_url(self, name: str) -> str:
        return f"https://{self.region}-{self.project}.cloudfunctions.net/{name}"

    def function_audiences(self, name: str) -> list[str]:
        """The audiences an operator route accepts, as Cloud Run's own front door does: the
        function's cloudfunctions.net URL and its service's run.app URL (tokens minted for a
        URL, by services and `bookcast`), and gcloud's OAuth client, the audience of the user
        token `gcloud functions call` sends (it calls with `credential.id_token`)."""
        return [self.function_url(name), f"https://{name}-{self.project_number}.{self.region}.run.app",
                GCLOUD_CLIENT_AUDIENCE]

    def account(self, name: str) -> str:
        return f"{name}@{self.project}.iam.gserviceaccount.com"

    @property
    def image(self) -> str:  # tagged with the code version, so "exists" means "built from this commit"
        return f"{self.region}-docker.pkg.dev/{self.project}/bookcast/trainer:{self.code_version}"

    @property
    def pubsub_agent(self) -> str:
        return f"service-{self.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"

    def bucket(self, name: str) -> str:
        return f"{self.project}-{name}"

    def gcloud(self, *args: str) -> list[str]:
        return ["gcloud", f"--project={self.project}", *args]


@dataclass
class Change:
    kind: str
    name: str
    action: Action
    differences: list[str] = field(default_factory=list)
    run: Callable[[], None] | None = None   # None: read from recorded state, nothing to apply it to
    command: list[str] | None = None        # the gcloud command it runs, shown in the plan

    @property
    def pending(self) -> bool:
        return self.action != "unchanged"

    def lines(self) -> list[str]:
        what = {"unchanged": "exists, unchanged", "create": "create", "update": "update", "replace": "replace",
                "delete": "delete"}[self.action]
        out = [f"{SYMBOLS[self.action]} {self.kind} {self.name}: {what}"]
        out += [f"    {d}" for d in self.differences]
        if self.command and self.pending:
            out.append(f"    $ {shlex.join(self.command)}")
        return out


@dataclass
class Plan:
    changes: list[Change]
    notes: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.pending]

    def summary(self) -> str:
        counts = {a: sum(c.action == a for c in self.changes) for a in SYMBOLS}
        return (f"{len(self.changes)} resources: {counts['unchanged']} unchanged, {counts['create']} to create, "
                f"{counts['update'] + counts['replace']} to update, {counts['delete']} to delete")

    def render(self) -> str:
        return "\n".join([line for c in self.changes for line in c.lines()] + [f"note: {n}" for n in self.notes]
                         + [self.summary()])


def apply(plan: Plan, report: Callable[[str], None] = print) -> None:
    """Runs the pending changes in plan order; stops at the first failure."""
    unrunnable = [c for c in plan.pending if c.run is None]
    if unrunnable:
        raise RuntimeError("cannot apply changes read from recorded state: "
                           + ", ".join(f"{c.kind} {c.name}" for c in unrunnable))
    for change in plan.pending:
        report(f"{SYMBOLS[change.action]} {change.kind} {change.name}")
        change.run()


def _runner(state: State, command: list[str], stdin: Callable[[], str] | None = None) -> Callable[[], None] | None:
    if not state.live:
        return None

    def run() -> None:
        subprocess.run(command, check=True, text=True, input=stdin() if stdin else None)
    return run


def _exists_change(state: State, kind: str, name: str, exists: bool, teardown: bool, create: list[str],
                   delete: list[str], stdin: Callable[[], str] | None = None) -> list[Change]:
    """A resource that is only created or deleted, never updated."""
    if teardown:
        return [Change(kind, name, "delete", run=_runner(state, delete), command=delete)] if exists else []
    if exists:
        return [Change(kind, name, "unchanged")]
    return [Change(kind, name, "create", run=_runner(state, create, stdin), command=create)]


# --- gcloud-only resources: APIs, service accounts, registry, image, secrets ------------------------

def plan_services(t: Target, state: State) -> list[Change]:
    enabled = {s["config"]["name"] for s in state.gcloud(["services", "list", "--enabled"]) or []}
    missing = [api for api in APIS if api not in enabled]
    command = t.gcloud("services", "enable", *missing)
    if not missing:
        return [Change("apis", "enabled", "unchanged")]
    return [Change("apis", "enabled", "update", [f"enable {', '.join(missing)}"], _runner(state, command), command)]


ACCOUNTS = {"bookcast-invoker": "bookcast push invoker", "bookcast-runtime": "bookcast functions",
            "bookcast-training": "bookcast training jobs"}


def plan_accounts(t: Target, state: State, teardown: bool) -> list[Change]:
    out = []
    for name, display in ACCOUNTS.items():
        exists = state.gcloud(["iam", "service-accounts", "describe", t.account(name)]) is not None
        out += _exists_change(state, "service account", name, exists, teardown,
                              t.gcloud("iam", "service-accounts", "create", name, f"--display-name={display}"),
                              t.gcloud("iam", "service-accounts", "delete", t.account(name), "--quiet"))
    return out


def plan_registry(t: Target, state: State, teardown: bool) -> list[Change]:
    exists = state.gcloud(["artifacts", "repositories", "describe", "bookcast", f"--location={t.region}"]) is not None
    out = _exists_change(state, "artifact repository", "bookcast", exists, teardown,
                         t.gcloud("artifacts", "repositories", "create", "bookcast", "--repository-format=docker",
                                  f"--location={t.region}"),
                         t.gcloud("artifacts", "repositories", "delete", "bookcast", f"--location={t.region}",
                                  "--quiet"))
    if teardown:  # the image goes with its repository
        return out
    from deploy.staging import stage_trainer

    name = t.image.rsplit("/", 1)[1]
    if exists and state.gcloud(["artifacts", "docker", "images", "describe", t.image]) is not None:
        return out + [Change("trainer image", name, "unchanged")]
    context = t.build_dir / "trainer"
    command = t.gcloud("builds", "submit", str(context), f"--tag={t.image}")
    build = _runner(state, command)
    run = (lambda: (stage_trainer(t.build_dir, t.topology.trainer), build())) if build else None
    return out + [Change("trainer image", name, "create", [f"staged from Dockerfile with shared/ and "
                                                           f"{len(t.topology.trainer.packages)} pinned packages"],
                         run, command)]


def _secret_value(secret: Secret) -> str | None:
    return random_secrets.token_hex(32) if secret.generated else os.environ.get(secret.variable)


def plan_secrets(t: Target, state: State, teardown: bool, notes: list[str]) -> tuple[list[Change], set[str]]:
    """Secrets, and the names of those that functions can mount (they have a version, or
    this apply creates one). Values are never read back or compared: rotating one is
    `gcloud secrets versions add`."""
    out, mountable = [], set()
    for secret in SECRETS:
        stored = state.gcloud(["secrets", "versions", "describe", "latest", f"--secret={secret.name}"])
        exists = stored is not None and stored.get("state") == "ENABLED"
        if not teardown and not exists and not secret.generated and not os.environ.get(secret.variable):
            notes.append(f"secret {secret.name} is not stored: set {secret.variable} in the deployer's environment "
                         f"to store and mount it (functions run without it)")
            continue
        if exists or not teardown:
            mountable.add(secret.name)
        source = "32 random bytes (hex)" if secret.generated else f"${secret.variable}"
        changes = _exists_change(state, "secret", secret.name, exists, teardown,
                                 t.gcloud("secrets", "create", secret.name, "--replication-policy=automatic",
                                          "--labels=app=bookcast", "--data-file=-"),
                                 t.gcloud("secrets", "delete", secret.name, "--quiet"),
                                 stdin=lambda secret=secret: _secret_value(secret))
        for change in changes:
            if change.action == "create":
                change.differences.append(f"value from stdin: {source}")
        out += changes
    return out, mountable


# --- IAM ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grant:
    kind: Literal["topic", "subscription", "secret", "service account", "function", "project"]
    resource: str
    role: str
    member: str

    @property
    def name(self) -> str:
        return f"{self.role} for {self.member} on {self.kind} {self.resource.rsplit('/', 1)[-1]}"


def _policy(t: Target, state: State, grant: Grant) -> dict:
    if grant.kind in ("topic", "subscription"):
        return state.pubsub_policy(grant.resource)
    reads = {"secret": ["secrets", "get-iam-policy", grant.resource],
             "service account": ["iam", "service-accounts", "get-iam-policy", grant.resource],
             "function": ["run", "services", "get-iam-policy", grant.resource, f"--region={t.region}"],
             "project": ["projects", "get-iam-policy", grant.resource]}
    return state.gcloud(reads[grant.kind]) or {}


def _grant_command(t: Target, grant: Grant, verb: str) -> list[str]:
    member, role = f"--member={grant.member}", f"--role={grant.role}"
    return {"secret": t.gcloud("secrets", f"{verb}-iam-policy-binding", grant.resource, member, role),
            "service account": t.gcloud("iam", "service-accounts", f"{verb}-iam-policy-binding", grant.resource,
                                        member, role),
            "function": t.gcloud("run", "services", f"{verb}-iam-policy-binding", grant.resource,
                                 f"--region={t.region}", member, role),
            "project": t.gcloud("projects", f"{verb}-iam-policy-binding", grant.resource, member, role,
                                "--condition=None")}[grant.kind]


def _add_pubsub_binding(grant: Grant) -> None:
    from google.cloud import pubsub_v1

    client = pubsub_v1.PublisherClient() if grant.kind == "topic" else pubsub_v1.SubscriberClient()
    policy = client.get_iam_policy(request={"resource": grant.resource})  # carries the etag: no lost update
    binding = next((b for b in policy.bindings if b.role == grant.role), None) or policy.bindings.add(role=grant.role)
    if grant.member not in binding.members:
        binding.members.append(grant.member)
    client.set_iam_policy(request={"resource": grant.resource, "policy": policy})


def grants(t: Target, mountable: set[str]) -> list[Grant]:
    d = t.topology.defaults
    agent = f"serviceAccount:{t.pubsub_agent}"
    runtime, training = f"serviceAccount:{t.account('bookcast-runtime')}", f"serviceAccount:{t.account('bookcast-training')}"
    out = [Grant("project", t.project, role, runtime) for role in RUNTIME_ROLES]
    out += [Grant("project", t.project, role, training) for role in TRAINING_ROLES]
    # The functions launch training jobs that run as the training account.
    out.append(Grant("service account", t.account("bookcast-training"), "roles/iam.serviceAccountUser", runtime))
    # Dead-lettering: the Pub/Sub service agent publishes to the dead-letter topic and
    # acknowledges the message on the subscription it gave up on.
    dead_letter_topics = sorted({s.dead_letter_to(d) for s in t.topology.subscriptions if s.dead_letter_to(d)})
    out += [Grant("topic", t.topic(topic), "roles/pubsub.publisher", agent) for topic in dead_letter_topics]
    out += [Grant("subscription", t.subscription(s.name), "roles/pubsub.subscriber", agent)
            for s in t.topology.subscriptions if s.dead_letter_to(d)]
    for secret in SECRETS:
        if secret.name in mountable:
            out.append(Grant("secret", secret.name, "roles/secretmanager.secretAccessor", runtime))
    out.append(Grant("secret", SIGNING_SECRET, "roles/secretmanager.secretAccessor", training))  # the trainer signs
    invoker = f"serviceAccount:{t.account('bookcast-invoker')}"
    out += [Grant("function", fn.name, "roles/run.invoker", invoker) for fn in t.topology.functions]
    return out


def plan_grants(t: Target, state: State, wanted: list[Grant], teardown: bool) -> list[Change]:
    """Teardown removes only project-level bindings: the others go with their resources."""
    out, policies = [], {}
    for grant in wanted:
        if teardown and grant.kind != "project":
            continue
        key = (grant.kind, grant.resource)
        if key not in policies:
            policies[key] = _policy(t, state, grant)
        held = any(b.get("role") == grant.role and grant.member in b.get("members", [])
                   for b in policies[key].get("bindings", []))
        if teardown:
            if held:
                command = _grant_command(t, grant, "remove")
                out.append(Change("grant", grant.name, "delete", run=_runner(state, command), command=command))
        elif held:
            out.append(Change("grant", grant.name, "unchanged"))
        elif grant.kind in ("topic", "subscription"):
            out.append(Change("grant", grant.name, "create",
                              run=(lambda grant=grant: _add_pubsub_binding(grant)) if state.live else None))
        else:
            command = _grant_command(t, grant, "add")
            out.append(Change("grant", grant.name, "create", run=_runner(state, command), command=command))
    return out


# --- Pub/Sub (client library; the emulator serves it) ------------------------------------------------

SUBSCRIPTION_FIELDS = ("ack_deadline_seconds", "push_config", "retry_policy", "dead_letter_policy",
                       "expiration_policy")


def desired_subscription(t: Target, sub):
    from google.cloud.pubsub_v1 import types

    d = t.topology.defaults
    least, most = sub.backoff(d)
    wanted = types.Subscription(
        name=t.subscription(sub.name), topic=t.topic(sub.topic), ack_deadline_seconds=d.ack_deadline_seconds,
        retry_policy=types.RetryPolicy(minimum_backoff=timedelta(seconds=least), maximum_backoff=timedelta(seconds=most)),
        # Never expire: an idle subscription (parked letters, a quiet week) must not vanish after 31 days.
        expiration_policy=types.ExpirationPolicy())
    if sub.function:
        # functions-framework takes the CloudEvent's topic from the push URL path; the OIDC
        # token's audience is the function's URL, which Cloud Run checks.
        wanted.push_config = types.PushConfig(
            push_endpoint=f"{t.function_url(sub.function)}/projects/{t.project}/topics/{sub.topic}",
            oidc_token=types.PushConfig.OidcToken(service_account_email=t.account("bookcast-invoker"),
                                                  audience=t.function_url(sub.function)))
    if sub.dead_letter_to(d):
        wanted.dead_letter_policy = types.DeadLetterPolicy(dead_letter_topic=t.topic(sub.dead_letter_to(d)),
                                                           max_delivery_attempts=sub.attempts(d))
    return wanted


def subscription_differences(wanted, actual) -> list[str]:
    """Field paths (for the update mask) whose desired value differs from the actual one.
    An empty message reads as unset (the emulator returns ``push_config {}`` for a pull
    subscription), except the expiration policy, where empty means never and unset 31 days."""
    from google.cloud.pubsub_v1 import types

    def value(subscription, name):
        pb = types.Subscription.pb(subscription)
        if name == "ack_deadline_seconds":
            return pb.ack_deadline_seconds
        field_value = getattr(pb, name)
        present = pb.HasField(name) and (name == "expiration_policy" or field_value.ByteSize() > 0)
        return field_value if present else None

    return [name for name in SUBSCRIPTION_FIELDS if value(wanted, name) != value(actual, name)]


def _describe(message) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(message, as_one_line=True) or "unset"


def plan_pubsub(t: Target, teardown: bool) -> tuple[list[Change], list[Change]]:
    """(topic changes, subscription changes)."""
    from google.api_core.exceptions import NotFound
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types
    from google.protobuf import field_mask_pb2

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()

    def read(get, **name):
        try:
            return get(**name)
        except NotFound:
            return None

    topics = []
    for topic in t.topology.topics:
        path = t.topic(topic.name)
        exists = read(publisher.get_topic, topic=path) is not None
        if teardown:
            if exists:
                topics.append(Change("topic", topic.name, "delete", run=lambda p=path: publisher.delete_topic(topic=p)))
        elif exists:
            topics.append(Change("topic", topic.name, "unchanged"))
        else:
            topics.append(Change("topic", topic.name, "create", run=lambda p=path: publisher.create_topic(name=p)))
    subscriptions = []
    for sub in t.topology.subscriptions:
        wanted = desired_subscription(t, sub)
        actual = read(subscriber.get_subscription, subscription=wanted.name)
        if teardown:
            if actual is not None:
                subscriptions.append(Change("subscription", sub.name, "delete",
                                            run=lambda n=wanted.name: subscriber.delete_subscription(subscription=n)))
            continue
        if actual is None:
            subscriptions.append(Change("subscription", sub.name, "create",
                                        run=lambda w=wanted: subscriber.create_subscription(request=w)))
            continue
        if actual.topic != wanted.topic:  # a subscription's topic cannot be changed in place
            def replace(w=wanted):
                subscriber.delete_subscription(subscription=w.name)
                subscriber.create_subscription(request=w)
            subscriptions.append(Change("subscription", sub.name, "replace",
                                        [f"topic: {actual.topic} → {wanted.topic}"], run=replace))
            continue
        changed = subscription_differences(wanted, actual)
        if not changed:
            subscriptions.append(Change("subscription", sub.name, "unchanged"))
            continue
        differences = [f"{f}: {_describe(getattr(types.Subscription.pb(actual), f))} → "
                       f"{_describe(getattr(types.Subscription.pb(wanted), f))}" if f != "ack_deadline_seconds" else
                       f"{f}: {actual.ack_deadline_seconds} → {wanted.ack_deadline_seconds}" for f in changed]
        mask = field_mask_pb2.FieldMask(paths=changed)
        subscriptions.append(Change("subscription", sub.name, "update", differences,
                                    run=lambda w=wanted, m=mask: subscriber.update_subscription(
                                        request={"subscription": w, "update_mask": m})))
    return topics, subscriptions


# --- Cloud Storage (client library; fake-gcs-server serves buckets, not notifications) -------------

def delete_bucket(client, name: str) -> None:
    """Empty the bucket page by page, then delete it: ``delete(force=True)`` refuses buckets of
    more than 256 objects, and an uploads bucket holds a year of uploads and exports."""
    bucket = client.bucket(name)
    for page in client.list_blobs(name, page_size=1000).pages:
        bucket.delete_blobs(list(page))
    bucket.delete()


def plan_buckets(t: Target, state: State, teardown: bool) -> tuple[list[Change], list[Change]]:
    """(bucket changes, notification changes)."""
    from shared.gcs import storage_client

    client = storage_client(t.project)
    buckets, notifications = [], []
    for bucket in t.topology.buckets:
        name = t.bucket(bucket.name)
        exists = client.lookup_bucket(name) is not None
        if teardown:
            if exists:  # with the notifications on it; objects included (force), as the topology made them
                buckets.append(Change("bucket", name, "delete", ["deletes its objects too"],
                                      run=lambda n=name: delete_bucket(client, n)))
            continue
        if exists:
            buckets.append(Change("bucket", name, "unchanged"))
        else:
            def create(n=name):
                made = client.bucket(n)
                made.iam_configuration.uniform_bucket_level_access_enabled = True
                client.create_bucket(made, location=t.region)
            buckets.append(Change("bucket", name, "create", [f"location {t.region}, uniform access"], run=create))
        actual = state.notifications(name)
        for n in bucket.notifications:
            wanted = {"topic": f"//pubsub.googleapis.com/{t.topic(n.topic)}", "event_types": sorted(n.event_types),
                      "object_name_prefix": n.object_prefix, "payload_format": "JSON_API_V1"}
            label = f"{name} → {n.topic}"
            same = [a for a in actual if {k: sorted(v) if k == "event_types" else v for k, v in a.items()
                                          if k in wanted} == wanted]
            if same:
                notifications.append(Change("notification", label, "unchanged"))
                continue

            def add(bucket_name=name, n=n):
                client.bucket(bucket_name).notification(
                    topic_name=n.topic, topic_project=t.project, event_types=list(n.event_types),
                    blob_name_prefix=n.object_prefix or None, payload_format="JSON_API_V1").create()
            notifications.append(Change("notification", label, "create",
                                        [f"{', '.join(n.event_types)} under {n.object_prefix or '/'}"],
                                        run=add if state.live else None))
    return buckets, notifications


# --- Cloud Scheduler (client library; no emulator: planned against recorded describe output) --------

SCHEDULER_FIELDS = ("schedule", "time_zone", "pubsub_target")


def desired_job(t: Target, job):
    from google.cloud import scheduler_v1

    return scheduler_v1.Job(
        name=f"projects/{t.project}/locations/{t.region}/jobs/{job.name}", schedule=job.schedule,
        time_zone=job.time_zone,
        pubsub_target=scheduler_v1.PubsubTarget(topic_name=t.topic(job.topic),
                                                data=json.dumps(job.data, separators=(",", ":")).encode(),
                                                attributes=job.attributes))


def job_differences(wanted, described: dict) -> list[str]:
    """Fields of a scheduler job (as `gcloud scheduler jobs describe` prints it) that differ."""
    from google.cloud import scheduler_v1

    actual = scheduler_v1.Job.from_json(json.dumps(described), ignore_unknown_fields=True)
    return [f for f in SCHEDULER_FIELDS if getattr(actual, f) != getattr(wanted, f)]


def plan_scheduler(t: Target, state: State, teardown: bool) -> list[Change]:
    from google.cloud import scheduler_v1
    from google.protobuf import field_mask_pb2

    def client():
        return scheduler_v1.CloudSchedulerClient()

    out = []
    for job in t.topology.scheduler_jobs:
        wanted = desired_job(t, job)
        described = state.scheduler_job(wanted.name)
        live = state.live
        if teardown:
            if described:
                out.append(Change("scheduler job", job.name, "delete",
                                  run=(lambda n=wanted.name: client().delete_job(name=n)) if live else None))
        elif described is None:
            out.append(Change("scheduler job", job.name, "create", [f"{job.schedule} ({job.time_zone}) → {job.topic}"],
                              run=(lambda w=wanted: client().create_job(
                                  parent=w.name.rsplit("/jobs/", 1)[0], job=w)) if live else None))
        elif changed := job_differences(wanted, described):
            mask = field_mask_pb2.FieldMask(paths=changed)
            out.append(Change("scheduler job", job.name, "update", [f"{f} differs" for f in changed],
                              run=(lambda w=wanted, m=mask: client().update_job(job=w, update_mask=m)) if live
                              else None))
        else:
            out.append(Change("scheduler job", job.name, "unchanged"))
    return out


# --- Cloud Functions (gcloud only) ------------------------------------------------------------------

def function_env(t: Target, fn: Function) -> dict[str, str]:
    env = {"BOOKCAST_PROFILE": "production", "BOOKCAST_PROJECT_ID": t.project, "BOOKCAST_REGION": t.region,
           "BOOKCAST_VERTEX__PROJECT": t.project, "BOOKCAST_VERTEX__REGION": t.region,
           "BOOKCAST_VERTEX__IMAGE": t.image, "BOOKCAST_VERTEX__SERVICE_ACCOUNT": t.account("bookcast-training"),
           "BOOKCAST_DATA_BUCKET": t.bucket(t.topology.buckets[0].name), "BOOKCAST_MLFLOW_TRACKING_URI": t.mlflow_uri,
           # A function has no git checkout: the version deployed is stamped here, for lineage tags.
           "BOOKCAST_CODE_VERSION": t.code_version,
           # Training jobs (Vertex) cannot mount secrets: they read the signing key by name.
           "BOOKCAST_EVENT_SIGNING_KEY_SECRET": f"projects/{t.project}/secrets/{SIGNING_SECRET}/versions/latest"}
    if fn.kind == "http":  # operator routes verify ID tokens minted for this URL
        env["BOOKCAST_IDENTITY__AUDIENCES"] = json.dumps(t.function_audiences(fn.name))
    if fn.name == "monitor":
        env["BOOKCAST_ALERTS__FORECAST_HEALTH_URL"] = f"{t.function_url('forecast')}/health"
    return env


def function_secrets(fn: Function, mountable: set[str]) -> dict[str, str]:
    return {s.variable: f"{s.name}:latest" for s in SECRETS if fn.name in s.functions and s.name in mountable}


def function_differences(t: Target, fn: Function, described: dict, mountable: set[str]) -> list[str]:
    """What `gcloud functions describe` (2nd gen) shows that differs from the topology."""
    build, service = described.get("buildConfig", {}), described.get("serviceConfig", {})
    actual_env = {k: v for k, v in (service.get("environmentVariables") or {}).items() if k != "LOG_EXECUTION_ID"}
    actual_secrets = {s["key"]: f"{s['secret']}:{s['version']}" for s in service.get("secretEnvironmentVariables", [])}
    wanted = {"entry point": (build.get("entryPoint"), fn.entry_point),
              "runtime": (build.get("runtime"), "python311"),
              "memory": (service.get("availableMemory"), fn.memory),
              "timeout": (service.get("timeoutSeconds"), fn.timeout_seconds),
              "concurrency": (service.get("maxInstanceRequestConcurrency", 1), fn.concurrency),
              "service account": (service.get("serviceAccountEmail"), t.account("bookcast-runtime")),
              "secrets": (actual_secrets, function_secrets(fn, mountable))}
    if fn.cpu:
        wanted["cpu"] = (service.get("availableCpu"), fn.cpu)
    out = [f"{name}: {have!r} → {want!r}" for name, (have, want) in wanted.items() if have != want]
    env = function_env(t, fn)
    out += [f"env {k}: {actual_env.get(k)!r} → {v!r}" for k, v in env.items() if actual_env.get(k) != v]
    out += [f"env {k}: remove" for k in actual_env if k not in env]
    if described.get("state") not in (None, "ACTIVE"):
        out.append(f"state {described['state']}: redeploy")
    return out


def deploy_command(t: Target, fn: Function, mountable: set[str]) -> list[str]:
    source = t.build_dir / Path(fn.source).name
    secrets = function_secrets(fn, mountable)
    return t.gcloud("functions", "deploy", fn.name, "--gen2", "--runtime=python311", f"--region={t.region}",
                    f"--source={source}", f"--entry-point={fn.entry_point}", "--trigger-http",
                    "--no-allow-unauthenticated", f"--memory={fn.memory}", f"--timeout={fn.timeout_seconds}s",
                    f"--service-account={t.account('bookcast-runtime')}", f"--concurrency={fn.concurrency}",
                    *([f"--cpu={fn.cpu}"] if fn.cpu else []),
                    # `^|^` makes | the separator: values (JSON lists) may hold commas
                    "--set-env-vars=^|^" + "|".join(f"{k}={v}" for k, v in function_env(t, fn).items()),
                    *(["--set-secrets=" + ",".join(f"{k}={v}" for k, v in secrets.items())] if secrets else []))


def plan_functions(t: Target, state: State, teardown: bool, mountable: set[str]) -> list[Change]:
    from deploy.staging import stage

    out = []
    for fn in t.topology.functions:
        described = state.gcloud(["functions", "describe", fn.name, f"--region={t.region}"])
        if teardown:
            if described:
                command = t.gcloud("functions", "delete", fn.name, f"--region={t.region}", "--quiet")
                out.append(Change("function", fn.name, "delete", run=_runner(state, command), command=command))
            continue
        command = deploy_command(t, fn, mountable)
        deploy = _runner(state, command)
        run = (lambda fn=fn, deploy=deploy: (stage(t.build_dir, fn), deploy())) if deploy else None
        if described is None:
            out.append(Change("function", fn.name, "create", [f"staged from {fn.source} with shared/"], run, command))
        elif differences := function_differences(t, fn, described, mountable):
            out.append(Change("function", fn.name, "update", differences, run, command))
        else:
            out.append(Change("function", fn.name, "unchanged"))
    return out


# --- Firestore composite indexes (gcloud only) ------------------------------------------------------

def _index_key(index: dict) -> tuple:
    group = index.get("collectionGroup") or index["name"].split("/collectionGroups/")[1].split("/")[0]
    fields = tuple((f["fieldPath"], f.get("order") or f.get("arrayConfig")) for f in index["fields"]
                   if f["fieldPath"] != "__name__")
    return group, index.get("queryScope", "COLLECTION"), fields


def plan_indexes(t: Target, state: State, teardown: bool) -> list[Change]:
    existing = {_index_key(i): i for i in state.gcloud(["firestore", "indexes", "composite", "list"]) or []}
    out = []
    for index in json.loads(INDEXES_FILE.read_text())["indexes"]:
        key = _index_key(index)
        label = f"{key[0]}({', '.join(f'{p} {o.lower()}' for p, o in key[2])})"
        found = existing.get(key)
        delete = t.gcloud("firestore", "indexes", "composite", "delete", found["name"].rsplit("/", 1)[1],
                          "--quiet") if found else []
        create = t.gcloud("firestore", "indexes", "composite", "create", f"--collection-group={key[0]}",
                          f"--query-scope={key[1]}",
                          *[f"--field-config=field-path={p},order={o.lower()}" for p, o in key[2]])
        out += _exists_change(state, "firestore index", label, found is not None, teardown, create, delete)
    return out


# --- the whole topology -------------------------------------------------------------------------------

def plan(t: Target, state: State, teardown: bool = False) -> Plan:
    """Everything, in apply order (teardown: reverse dependency order)."""
    notes: list[str] = []
    secrets, mountable = plan_secrets(t, state, teardown, notes)
    wanted_grants = grants(t, mountable)
    project_grants = [g for g in wanted_grants if g.kind in ("project", "service account")]
    resource_grants = [g for g in wanted_grants if g not in project_grants]
    topics, subscriptions = plan_pubsub(t, teardown)
    buckets, notifications = plan_buckets(t, state, teardown)
    if teardown:
        notes.append("APIs stay enabled; IAM bindings on deleted resources go with them")
        changes = (plan_scheduler(t, state, True) + subscriptions + plan_functions(t, state, True, mountable)
                   + buckets + topics + plan_indexes(t, state, True) + secrets + plan_registry(t, state, True)
                   + plan_grants(t, state, project_grants, True) + plan_accounts(t, state, True))
        return Plan(changes, notes)
    changes = (plan_services(t, state) + plan_accounts(t, state, False) + plan_registry(t, state, False) + secrets
               + plan_grants(t, state, project_grants, False) + topics + subscriptions + buckets + notifications
               + plan_functions(t, state, False, mountable) + plan_grants(t, state, resource_grants, False)
               + plan_scheduler(t, state, False) + plan_indexes(t, state, False))
    return Plan(changes, notes)
