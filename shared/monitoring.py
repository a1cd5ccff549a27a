"""The monitor function's logic. So far: on every monitor tick, runs whose training job died
(expired lease) are marked failed and retried once. Health checks, metric thresholds, stale
models and Slack/email alerts are not built yet; other events are only logged."""
from __future__ import annotations

from shared.config import Settings
from shared.events import PubSubMessage
from shared.logs import get_logger
from shared.runstore import RunStore

log = get_logger(__name__)


def on_message(cfg: Settings, message: PubSubMessage, store: RunStore | None = None) -> list[str]:
    """Returns the runs it retried."""
    if message.attributes.get("event_type") != "schedule.tick":
        return []
    from shared.trigger import reap_expired_leases

    retried = reap_expired_leases(cfg, store or RunStore(cfg))
    if retried:
        log.warning("retried runs whose job died: %s", retried)
    return retried
