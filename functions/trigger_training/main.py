"""Cloud Function `trigger_training` (CloudEvent via Pub/Sub push): GCS uploads, scheduled
retrain ticks and manual training requests. Rejected input is recorded and acknowledged;
only transient failures raise, so Pub/Sub retries them (with backoff, then dead-letters)."""
import functions_framework

from shared.config import settings
from shared.events import receive
from shared.logs import configure, correlated, get_logger

configure()
log = get_logger("trigger_training")


@functions_framework.cloud_event
def trigger_training(cloud_event):
    from shared.trigger import handle

    message = receive(cloud_event, log)
    with correlated(message.correlation_id):
        outcome = handle(settings(), message)
        log.info("%s: %s", outcome.status, outcome.detail,
                 extra={"outcome": outcome.status, "run_id": outcome.run_id, "message_id": message.message_id})
