"""Cloud Function `monitor` (CloudEvent): scheduled checks and failure events."""
import functions_framework

from shared.events import receive
from shared.logs import configure, get_logger

configure()
log = get_logger("monitor")


@functions_framework.cloud_event
def monitor(cloud_event):
    receive(cloud_event, log)
