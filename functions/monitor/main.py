"""Cloud Function `monitor` (CloudEvent via Pub/Sub push): scheduled checks and failure
events become deduplicated alerts."""
import functions_framework

from shared.entry import pubsub_entry


def handle(cfg, message):
    from shared.monitoring import on_message

    result = on_message(cfg, message)
    exported = result.get("exported")
    return {"summary": f"{len(result['sent'])} alert(s) sent, {len(result['resolved'])} resolved"
                       + (f", forecasts of {exported['isbns']} ISBNs exported" if exported else ""), **result}


monitor = functions_framework.cloud_event(pubsub_entry("monitor", handle))
