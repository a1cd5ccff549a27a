"""One typed configuration for every process: profile defaults, then environment overrides.

Environment variables use the prefix ``BOOKCAST_`` and ``__`` for nesting, for example
``BOOKCAST_GATES__MAX_MAPE=0.4`` or ``BOOKCAST_TRAINING__TRIALS=50``. The emulator hosts
keep Google's own names (PUBSUB_EMULATOR_HOST, ...) because the client libraries read them.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

Profile = Literal["development", "test", "production"]


class TrainingSettings(BaseModel):
    holdout_weeks: int = Field(26, ge=4, le=104)
    trials: int = Field(16, ge=1, description="Optuna trials per ISBN (at least one per model family)")
    min_history_weeks: int = Field(30, ge=8)
    max_fourier_pairs: int = Field(8, ge=1, le=20)
    seed: int = 42
    workers: int = Field(0, ge=0, description="processes for per-ISBN training; 0 = all cores")
    lease_ttl_seconds: int = Field(1800, ge=10)
    isbns_per_shard: int = Field(250, ge=1, description="a run is split into shards of about this many ISBNs, each "
                                                        "trained by its own worker (shared/lifecycle/shards.py)")
    local_shards: int = Field(0, ge=0, description="most shard workers of a local run; 0 = one per core")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)


class GateSettings(BaseModel):
    """Scale-free by default (shared/forecasting/gates.py); ``bookcast thresholds`` recommends
    values per segment from the registry's history."""
    max_relative_mae: float = Field(1.0, gt=0, description="model MAE / seasonal-naive MAE on the holdout must be below")
    max_wape: float = Field(1.0, gt=0, description="sum of absolute errors / units sold in the holdout")
    champion_margin: float = Field(0.05, description="allowed MAE worsening against the champion refitted on the same weeks")
    evidence: float = Field(0.9, gt=0.5, lt=1, description="how sure the backtests must be that a candidate is worse "
                                                           "(than naive or the champion) to refuse it")
    max_rmse: float | None = Field(None, gt=0, description="optional absolute limit, off by default")
    max_mape: float | None = Field(None, gt=0, description="optional; never applied to a holdout with zero weeks")


class DecisionSettings(BaseModel):
    max_model_age_days: int = Field(84, description="re-estimate parameters at least this often; refreshes in between")
    degradation_threshold: float = Field(0.25, description="relative error increase on unseen weeks")
    min_new_weeks_for_degradation: int = 4
    work_budget_seconds: float = Field(30.0, ge=0, description="deciding stops after this long and a new delivery "
                                                                 "resumes it, well inside the 60 s ack deadline")


class ServingSettings(BaseModel):
    alias: str = "champion"
    alias_ttl_seconds: float = 10.0
    max_horizon: int = 104
    max_isbns_per_request: int = 50
    registry_retry_seconds: float = Field(15.0, description="after MLflow failed, serve cached models this long "
                                                             "without asking it (one background probe at a time)")


class VertexSettings(BaseModel):
    project: str = "bookcast-prod"
    region: str = "europe-west1"
    service_account: str = "bookcast-training@bookcast-prod.iam.gserviceaccount.com"
    machine_type: str = "n2-standard-8"
    image: str = "europe-west1-docker.pkg.dev/bookcast-prod/bookcast/trainer:latest"
    staging_bucket: str = "gs://bookcast-prod-vertex-staging"
    max_replicas: int = Field(100, ge=1, description="most shards (replicas) of one training job")
    dry_run: bool = True


class AlertSettings(BaseModel):
    # Secrets never leave the process that reads them: excluded from every dump (job
    # requests, Vertex arguments, dry-run files) and masked in reprs and logs. In the
    # cloud they come from Secret Manager through the environment.
    slack_webhook_url: SecretStr | None = Field(None, exclude=True)
    email_to: list[str] = []
    email_from: str = "bookcast-monitor@localhost"
    smtp_host: str | None = Field(None, exclude=True)
    smtp_port: int = 25
    dedup_window_minutes: int = 240
    failed_run_lookback_hours: int = 24
    forecast_health_url: str | None = None
    daily_summary_hour_utc: int = Field(7, ge=0, le=23, description="the first monitor tick of a day at or after "
                                                                     "this hour sends the daily summary")
    max_rmse_increase: float = Field(0.20, ge=0, description="a new champion whose holdout RMSE exceeds the one it "
                                                               "replaced by more than this share is alerted")
    max_relative_error_increase: float = Field(0.15, ge=0, description="the same for WAPE, and for MAPE when "
                                                                         "neither holdout has zero weeks")


class IdentitySettings(BaseModel):
    """Who may call the operator routes (shared/identity.py). ``google``: Google-signed ID
    tokens (the cloud); ``local``: tokens signed by the local stack's key."""
    issuer: Literal["google", "local"] = "local"
    audiences: list[str] = Field([], description="the function's URL(s): tokens minted for anything else are refused")
    allowed_callers: list[str] = Field([], description="emails or 'domain:example.com'; empty: anyone the "
                                                        "function's invoker IAM lets in")
    local_keys_dir: str | None = Field(None, description="the local signing key; default <state_dir>/identity")
    google_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"


class PromotionSettings(BaseModel):
    """When a candidate that passed the gates is risky to serve at once (shared/promotion.py):
    it becomes the ``challenger``, shadow-scored on the weeks uploaded after it, and served
    to a share of callers (canary) until it wins or loses; with ``require_approval`` a
    person decides its promotion (``bookcast approve``)."""
    max_forecast_change: float = Field(0.25, ge=0, description="risky if its next weeks' forecast differs from the "
                                                                "champion's by more than this share of the champion's")
    compare_weeks: int = Field(13, ge=1, le=104, description="the weeks ahead the forecasts are compared over")
    family_change_is_risky: bool = True
    rollback_window_days: int = Field(28, ge=0, description="risky if the ISBN was rolled back (or reverted) this "
                                                            "recently")
    weeks_to_decide: int = Field(4, ge=1, description="uploaded weeks scored before the challenger is promoted "
                                                      "(lower MAE than the champion) or retired")
    canary_share: float = Field(0.1, ge=0, le=1, description="share of callers served the challenger, chosen by a "
                                                             "hash of the caller")
    require_approval: bool = False


class EnvironmentSettings(BaseModel):
    """Another deployment of bookcast, with its own project and registry, that models are
    promoted between (shared/release.py)."""
    project_id: str
    mlflow_tracking_uri: str
    model_name_prefix: str = "bookcast-"
    collection_prefix: str = ""
    exchange_bucket: str | None = Field(None, description="its exchange bucket, if not this deployment's")
    require_approval: bool | None = Field(None, description="whether an import there waits for approval, if not "
                                                            "as this deployment's release settings say")


class ReleaseSettings(BaseModel):
    """`bookcast promote --from staging --to production`: a version leaves one environment as
    a manifest and its artifacts in the exchange bucket and enters the other's registry."""
    environment: str = Field("development", description="this deployment's name in a promotion chain")
    environments: dict[str, EnvironmentSettings] = Field({}, description="the others, by name (JSON in "
                                                                          "BOOKCAST_RELEASE__ENVIRONMENTS)")
    exchange_bucket: str = "bookcast-model-exchange"
    require_approval: bool = Field(True, description="an imported version serves only once approved "
                                                     "(bookcast approve) in the target environment")


class CostSettings(BaseModel):
    """Unit prices `bookcast cost` assumes: USD list prices for europe-west1 as we read them,
    without free tiers or committed-use discounts. Check them against the billing account
    before relying on the total; override any with BOOKCAST_COST__<NAME>."""
    function_vcpu_second: float = 0.000024       # Cloud Functions 2nd gen (Cloud Run), while busy
    function_gib_second: float = 0.0000025
    function_million_requests: float = 0.40
    training_node_hour: float = 0.44             # Vertex AI custom training, n2-standard-8
    training_vcpus: int = 8
    job_startup_hours: float = 0.05              # a node's ~3 minutes of image pull and start-up per job
    firestore_100k_reads: float = 0.06
    firestore_100k_writes: float = 0.18
    pubsub_tib: float = 40.0
    message_bytes: int = 2048                    # billed size of a typical bookcast message
    storage_gib_month: float = 0.020
    version_artifact_bytes: int = 60_000         # a version's run artifacts (model, plot, forecast, study)
    scheduler_job_month: float = 0.10
    mlflow_server_month: float = 25.0            # one small always-on instance with its database
    decision_seconds: float = 0.003              # trigger-training busy time per ISBN per upload
    check_seconds: float = 0.002                 # monitor busy time per ISBN per tick


PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "development": {"training": {"trials": 16}},
    "test": {"training": {"trials": 6, "holdout_weeks": 26, "workers": 2, "isbns_per_shard": 2}},
    "production": {
        "training": {"trials": 40},
        "launcher": "vertex",
        "vertex": {"dry_run": False},
        "identity": {"issuer": "google"},
    },
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BOOKCAST_", env_nested_delimiter="__", extra="ignore")

    profile: Profile = "development"
    project_id: str = "bookcast-local"
    region: str = "europe-west1"
    data_bucket: str = "bookcast-uploads"
    upload_prefix: str = "sales/"
    collection_prefix: str = Field("", description="isolates Firestore collections (tests, tenants)")
    mlflow_tracking_uri: str = "http://127.0.0.1:5055"
    model_name_prefix: str = "bookcast-"
    state_dir: str = ".state"
    launcher: Literal["local", "vertex"] = "local"
    code_version: str = "dev"

    training: TrainingSettings = TrainingSettings()
    gates: GateSettings = GateSettings()
    decision: DecisionSettings = DecisionSettings()
    serving: ServingSettings = ServingSettings()
    vertex: VertexSettings = VertexSettings()
    alerts: AlertSettings = AlertSettings()
    promotion: PromotionSettings = PromotionSettings()
    release: ReleaseSettings = ReleaseSettings()
    identity: IdentitySettings = IdentitySettings()
    cost: CostSettings = CostSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Profile defaults arrive as init kwargs; the environment must still win over them.
        return env_settings, init_settings

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> "Settings":
        """Settings serialised into a job request, exactly as sent: the job's own
        environment must not change the configuration it was launched with."""
        return _Snapshot(**data)

    def model_name(self, isbn: str) -> str:
        return f"{self.model_name_prefix}{isbn}"

    def collection(self, name: str) -> str:
        return f"{self.collection_prefix}{name}"


class _Snapshot(Settings):
    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **other_sources):
        return (init_settings,)


def load_settings(profile: str | None = None) -> Settings:
    chosen = profile or os.environ.get("BOOKCAST_PROFILE", "development")
    if chosen not in PROFILE_DEFAULTS:
        raise ValueError(f"unknown profile {chosen!r}; choose one of {sorted(PROFILE_DEFAULTS)}")
    return Settings(profile=chosen, **PROFILE_DEFAULTS[chosen])


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings, read once (functions read them at cold start)."""
    return load_settings()
