"""The common shell of the Pub/Sub-fed functions: decode the CloudEvent, log its arrival,
run the handler under the message's correlation id, log the outcome (the handler's dict;
its "summary" becomes the log message). Events on internal topics must carry our signature.
A PermanentFailure (a forgery included) is recorded, announced and acknowledged; anything
else raises, so Pub/Sub redelivers it."""
from __future__ import annotations

from typing import Any, Callable

from shared.config import Settings, settings
from shared.events import PubSubMessage, receive
from shared.failures import PermanentFailure, record
from shared.logs import configure, correlated, get_logger
from shared.signing import authentic


def pubsub_entry(name: str, handler: Callable[[Settings, PubSubMessage], dict | None]) -> Callable[[Any], None]:
    configure()
    log = get_logger(name)

    def entry(cloud_event: Any) -> None:
        message = receive(cloud_event, log)
        with correlated(message.correlation_id):
            try:
                if not authentic(message):
                    raise PermanentFailure(f"forged event on {message.topic}: no valid signature "
                                           f"(event_type {message.attributes.get('event_type')!r})")
                outcome = dict(handler(settings(), message) or {})
            except PermanentFailure as failure:
                first = record(settings(), name, message, failure)
                log.error("rejected message %s for good: %s", message.message_id, failure.reason,
                          extra={"message_id": message.message_id, "topic": message.topic, "first_delivery": first})
                return
            summary = outcome.pop("summary", f"handled message {message.message_id}")
            log.info("%s", summary, extra={"message_id": message.message_id, **outcome})

    entry.__name__ = name
    return entry
