"""Cloud Function `monitor` (CloudEvent): scheduled checks and failure events."""
import functions_framework

from shared.logs import configure, get_logger

configure()
log = get_logger("monitor")


@functions_framework.cloud_event
def monitor(cloud_event):
    from shared.events import PubSubMessage

    message = PubSubMessage.from_cloud_event(cloud_event)
    log.info("received %s", message.attributes.get("event_type", "message"),
             extra={"topic": message.topic, "message_id": message.message_id,
                    "correlation_id": message.attributes.get("correlation_id")})
