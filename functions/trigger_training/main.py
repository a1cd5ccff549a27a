"""Cloud Function `trigger_training` (CloudEvent): uploads, retrain ticks, manual requests."""
import functions_framework

from shared.events import receive
from shared.logs import configure, get_logger

configure()
log = get_logger("trigger_training")


@functions_framework.cloud_event
def trigger_training(cloud_event):
    receive(cloud_event, log)
