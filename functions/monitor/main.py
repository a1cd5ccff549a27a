"""Cloud Function `monitor` (CloudEvent): scheduled checks and failure events."""
import functions_framework

from shared.config import settings
from shared.events import receive
from shared.logs import configure, correlated, get_logger

configure()
log = get_logger("monitor")


@functions_framework.cloud_event
def monitor(cloud_event):
    from shared.monitoring import on_message

    message = receive(cloud_event, log)
    with correlated(message.correlation_id):
        on_message(settings(), message)
