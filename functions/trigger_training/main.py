"""Cloud Function `trigger_training` (CloudEvent via Pub/Sub push): GCS uploads, scheduled
retrain ticks and manual training requests. Rejected input is recorded and acknowledged;
only transient failures raise, so Pub/Sub retries them (with backoff, then dead-letters)."""
import functions_framework

from shared.entry import pubsub_entry


def handle(cfg, message):
    from shared.trigger import handle as decide_and_launch

    outcome = decide_and_launch(cfg, message)
    return {"summary": f"{outcome.status}: {outcome.detail}", "outcome": outcome.status, "run_id": outcome.run_id}


trigger_training = functions_framework.cloud_event(pubsub_entry("trigger_training", handle))
