"""Promotion between environments (staging → production): separate projects, each with its
own MLflow registry, joined only by an exchange bucket.

A version leaves its environment as ``releases/<environment>/<isbn>/v<version>/`` in the
exchange bucket: its artifacts (fitted model, serving forecast, Optuna study, holdout plot)
and, written last, ``manifest.json`` with everything the registry knew of it (params,
metrics, every version tag: lineage, data hash, the code version it was trained with), the
source environment, project, version and run, the code that promoted it, each artifact's
SHA-256 and the promotion chain (every environment it went through, oldest first). The
target imports it as a new version of the ISBN's model carrying all of that (tags
``release_id``, ``released_from``, ``promotion_chain``), once per release, and serves it
only through an approval (shared/promotion.py) unless ``release.require_approval`` is off.

    promote(cfg, "staging", "production", ["9780306406157"], actor, reason)
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from pathlib import Path

from shared import registry
from shared.config import Settings
from shared.logs import get_logger
from shared.layout import AuditKind, Collection
from shared.runstore import RunStore, now
from shared.states import AliasMove, ReleaseStatus
from shared.version_tags import Tag

log = get_logger(__name__)
MANIFEST = "manifest.json"
SERVING = "serving/forecast.json"
STUDY, PLOT = "optuna_study.json", registry.HOLDOUT_PLOT
SYSTEM_TAG_PREFIX = "mlflow."
MODEL_CONFIG_PARAMS = "model/"  # MLflow logs the pyfunc's model_config as params: registering logs them again


class ReleaseError(ValueError):
    """A promotion that cannot be made as asked (unknown environment, nothing served...)."""


def environment(cfg: Settings, name: str) -> Settings:
    """The settings of environment ``name``: this deployment's own, or one it knows of."""
    if name == cfg.release.environment:
        return cfg
    other = cfg.release.environments.get(name)
    if other is None:
        known = sorted({cfg.release.environment, *cfg.release.environments})
        raise ReleaseError(f"unknown environment {name!r}: known are {', '.join(known)} "
                           "(BOOKCAST_RELEASE__ENVIRONMENTS)")
    own = {k: v for k, v in other.model_dump().items() if k in ("exchange_bucket", "require_approval") and v is not None}
    deployment = other.model_dump(exclude={"exchange_bucket", "require_approval"})
    return cfg.model_copy(update={**deployment, "release": cfg.release.model_copy(update={"environment": name, **own})})


def _bucket(cfg: Settings, name: str | None = None):
    from shared.gcs import storage_client

    return storage_client(cfg.project_id).bucket(name or cfg.release.exchange_bucket)


def export(cfg: Settings, isbn: str, actor: str, version: str | None = None) -> str:
    """Write the ISBN's champion (or ``version``) with its manifest to the exchange bucket;
    returns the manifest's gs:// URI."""
    from shared.jobs import code_version

    client = registry.client(cfg)
    name = cfg.model_name(isbn)
    found = client.get_model_version(name, version) if version else registry.version_by_alias(cfg, isbn)
    if found is None:
        raise ReleaseError(f"nothing serves {isbn} in {cfg.release.environment}")
    run = client.get_run(found.run_id)
    prefix = f"releases/{cfg.release.environment}/{isbn}/v{found.version}/"
    bucket = _bucket(cfg)
    listed = {a.path for a in client.list_artifacts(found.run_id)} | {a.path for a in
                                                                       client.list_artifacts(found.run_id, "serving")}
    artifacts = {}
    with tempfile.TemporaryDirectory() as folder:
        for path in (registry.FITTED_MODEL, SERVING, STUDY, PLOT):
            if path not in listed:
                continue
            content = Path(client.download_artifacts(found.run_id, path, folder)).read_bytes()
            bucket.blob(prefix + path).upload_from_string(content)
            artifacts[path] = {"object": prefix + path, "sha256": hashlib.sha256(content).hexdigest()}
    missing = {registry.FITTED_MODEL, SERVING} - set(artifacts)
    if missing:
        raise ReleaseError(f"{isbn} v{found.version} has no {', '.join(sorted(missing))}: it cannot be served elsewhere")
    tags = {k: v for k, v in (found.tags or {}).items() if not k.startswith(SYSTEM_TAG_PREFIX)}
    step = {"environment": cfg.release.environment, "project_id": cfg.project_id, "model_name": name,
            "version": found.version, "run_id": found.run_id, "exported_at": now().isoformat(), "exported_by": actor}
    manifest = {
        "release_id": f"{cfg.release.environment}-{isbn}-v{found.version}", "isbn": isbn, "source": step,
        "params": dict(run.data.params), "metrics": dict(run.data.metrics), "version_tags": tags,
        "data_hash": tags.get(Tag.DATA_HASH), "code_version": tags.get(Tag.CODE_VERSION),
        "promoted_with": code_version(cfg), "artifacts": artifacts,
        "promotion_chain": json.loads(tags.get(Tag.PROMOTION_CHAIN, "[]")) + [step]}
    bucket.blob(prefix + MANIFEST).upload_from_string(json.dumps(manifest, indent=2), content_type="application/json")
    uri = f"gs://{cfg.release.exchange_bucket}/{prefix}{MANIFEST}"
    log.info("exported %s v%s from %s to %s", isbn, found.version, cfg.release.environment, uri, extra={"isbn": isbn})
    return uri


def import_release(cfg: Settings, manifest_uri: str, actor: str, reason: str, store: RunStore | None = None) -> dict:
    """Register a release in this environment's registry with all its metadata, then ask for
    approval (or serve it). Idempotent: a release already imported is not registered again."""
    from shared import promotion
    from shared.gcs import split_uri

    store = store or RunStore(cfg)
    bucket_name, manifest_object = split_uri(manifest_uri)
    bucket = _bucket(cfg, bucket_name)
    manifest = json.loads(bucket.blob(manifest_object).download_as_bytes())
    isbn, release_id = manifest["isbn"], manifest["release_id"]
    name = cfg.model_name(isbn)
    imported = [v for v in registry.client(cfg).search_model_versions(f"name='{name}'")
                if (v.tags or {}).get(Tag.RELEASE_ID) == release_id]
    if imported:
        return {"isbn": isbn, "release_id": release_id, "version": imported[0].version, "status": ReleaseStatus.IMPORTED_ALREADY}
    contents = {}
    for path, artifact in manifest["artifacts"].items():
        content = bucket.blob(artifact["object"]).download_as_bytes()
        if hashlib.sha256(content).hexdigest() != artifact["sha256"]:
            raise ReleaseError(f"{artifact['object']} does not match its manifest's SHA-256: not imported")
        contents[path] = content
    source = manifest["source"]
    chain = manifest["promotion_chain"]
    tags = {**manifest["version_tags"], Tag.RELEASE_ID: release_id, Tag.RELEASE_MANIFEST: manifest_uri,
            Tag.RELEASED_FROM: f"{source['environment']} ({source['project_id']}) v{source['version']}",
            Tag.PROMOTION_CHAIN: json.dumps(chain), Tag.PROMOTED_WITH: manifest["promoted_with"]}
    registration = registry.register(
        cfg, isbn, json.loads(contents[registry.FITTED_MODEL]), json.loads(contents[SERVING]),
        {k: v for k, v in manifest["params"].items() if not k.startswith(MODEL_CONFIG_PARAMS)}, manifest["metrics"], tags, study=json.loads(contents[STUDY]) if STUDY in contents else None,
        plot_png=contents.get(PLOT, b""))
    version = registration.version
    correlation_id = f"release-{uuid.uuid4().hex[:12]}"
    why = f"promoted from {source['environment']} v{source['version']} by {actor}: {reason}"
    champion = getattr(registry.version_by_alias(cfg, isbn), "version", None)
    if cfg.release.require_approval:
        promotion.request_approval(cfg, store, isbn, version, champion, [why],
                                   f"Registered in {cfg.release.environment}; v{champion or 'nothing'} serves until "
                                   "it is approved", correlation_id)
        status = ReleaseStatus.WAITING
    else:
        registry.move_alias(cfg, store, isbn, version, AliasMove.PROMOTE, why, actor, correlation_id)
        served = getattr(registry.version_by_alias(cfg, isbn), "version", None) == version
        status = ReleaseStatus.SERVING if served else ReleaseStatus.FAILED
    result = {"isbn": isbn, "release_id": release_id, "version": version, "status": status}
    store.col(Collection.AUDIT).document(f"release-{uuid.uuid4().hex[:12]}").set({
        "kind": AuditKind.RELEASE, "actor": actor, "reason": reason, "manifest": manifest_uri, "result": result,
        "chain": chain, "at": now(), "correlation_id": correlation_id})
    log.info("imported %s as v%s in %s: %s", release_id, version, cfg.release.environment, status, extra={"isbn": isbn})
    return result


def promote(cfg: Settings, source: str, target: str, isbns: list[str] | None, actor: str, reason: str) -> list[dict]:
    """Export each ISBN's champion from ``source`` and import it into ``target`` (every
    served ISBN when ``isbns`` is empty)."""
    if source == target:
        raise ReleaseError("promote between two different environments")
    origin, destination = environment(cfg, source), environment(cfg, target)
    results = []
    for isbn in isbns or registry.served_isbns(origin):
        uri = export(origin, isbn, actor)
        results.append({**import_release(destination, uri, actor, reason), "manifest": uri})
    return results
