"""An upload made while trigger_training is down is decided soon after it comes back, on
the real emulators: its notification is dead-lettered, the monitor asks for a replay, and
the replay's push (retried at least once a minute) lands when the function is back."""
from __future__ import annotations

import time

import pytest

from emulators.processes import stop
from emulators.stack import Ports
from emulators.wiring import wire
from shared.gcs import storage_client
from shared.runstore import RunStore
from shared.states import CauseStatus

OUTAGE_SECONDS = 100
REPLAY_WITHIN_SECONDS = 120


def wait_for(found, timeout: float, pause: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(pause)
    return None


@pytest.mark.slow
def test_an_upload_dead_lettered_during_a_100_s_outage_is_decided_within_2_minutes_of_recovery(
        cloud, cfg, project_gcs):
    # The uploads' subscription gives up after 5 quick attempts here, so the notification is
    # dead-lettered well inside the outage (deployed, it keeps trying for ~20 minutes).
    topology = cloud.topology.model_copy(deep=True)
    uploads = next(s for s in topology.subscriptions if s.name == "trigger-training-uploads")
    uploads.max_delivery_attempts, uploads.max_backoff_seconds = 5, 10
    ports = Ports.free().functions
    env = {"BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix, "BOOKCAST_STATE_DIR": cfg.state_dir,
           "STORAGE_EMULATOR_HOST": project_gcs, "BOOKCAST_PROFILE": "test", "BOOKCAST_LAUNCHER": "vertex"}
    store = RunStore(cfg)
    monitor = cloud.start_function("monitor", project=cfg.project_id, port=ports["monitor"], extra_env=env)
    trigger = None
    try:
        # trigger_training is down: nothing listens on its port, every push to it fails.
        wire(topology, cfg.project_id, cloud.ports, function_ports=ports, only_functions={"trigger-training", "monitor"})
        outage_started = time.monotonic()
        cid = f"outage-{cfg.project_id}"
        blob = storage_client(cfg.project_id).bucket(cfg.data_bucket).blob("sales/during-outage.csv")
        blob.metadata = {"correlation_id": cid}
        blob.upload_from_string("isbn,week,units\n9780306406157,2026-11-16,12\n9780306406157,2026-11-23,15\n",
                                content_type="text/csv")

        dead_letter = wait_for(lambda: [a for a in store.stream("alerts") if a["key"].startswith("dead-letter:")],
                               timeout=OUTAGE_SECONDS - 5)
        assert dead_letter, "the upload's notification should have been dead-lettered during the outage"
        assert "trigger-training-uploads" in dead_letter[0]["detail"]
        assert not list(store.stream("causes")), "nothing can have decided the upload while trigger_training was down"

        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
        trigger = cloud.start_function("trigger-training", project=cfg.project_id, port=ports["trigger-training"],
                                       extra_env=env)
        back = time.monotonic()
        cause = wait_for(lambda: next((c for c in store.stream("causes")
                                       if c.get("correlation_id") == cid and c["status"] != CauseStatus.DECIDING), None),
                         timeout=REPLAY_WITHIN_SECONDS)
        waited = time.monotonic() - back
        assert cause is not None, f"the upload was not decided within {REPLAY_WITHIN_SECONDS} s of recovery"
        assert cause["message_id"].startswith("reconcile-"), "decided by the replay, not by a late redelivery"
        assert cause["status"] == "accepted", cause
        print(f"decided {waited:.0f} s after trigger_training came back")
    finally:
        for proc in (trigger, monitor):
            if proc is not None:
                stop(proc)
