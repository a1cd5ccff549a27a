"""The cloud deploy builds from the same topology as the local cloud."""
from __future__ import annotations

from deploy.__main__ import commands
from shared.topology import load


def test_deploy_creates_the_topology_the_emulators_build(tmp_path):
    topology = load()
    lines = commands(topology, "bookcast-prod", "europe-west1", tmp_path, "https://mlflow.example")
    text = [" ".join(c) for c in lines]
    for topic in topology.topics:
        assert any(f"pubsub topics create {topic.name}" in t for t in text)
    for sub in topology.subscriptions:
        (line,) = [c for c in lines if c[3:6] == ["subscriptions", "create", sub.name]]
        assert (f"--push-endpoint=https://europe-west1-bookcast-prod.cloudfunctions.net/{sub.function}"
                f"/projects/bookcast-prod/topics/{sub.topic}") in line
        assert ("--dead-letter-topic=dead-letters" in line) == sub.dead_letter
        assert "--min-retry-delay=10s" in line
    deploys = [c for c in lines if c[2:4] == ["functions", "deploy"]]
    assert sorted(c[4] for c in deploys) == sorted(f.name for f in topology.functions)
    for fn in topology.functions:
        staged = tmp_path / fn.source.split("/")[-1]
        assert (staged / "main.py").exists() and (staged / "shared" / "serving.py").exists()
        assert (staged / "requirements.txt").read_text().count("==") > 50
    image = "europe-west1-docker.pkg.dev/bookcast-prod/bookcast/trainer:latest"
    assert any(c[2:4] == ["builds", "submit"] and f"--tag={image}" in c for c in lines)
    assert all(f"BOOKCAST_VERTEX__IMAGE={image}" in " ".join(c) for c in deploys)
    weekly = next(c for c in lines if "weekly-retrain" in c)
    assert "--schedule=0 5 * * 1" in weekly and "--topic=retrain-ticks" in weekly
    assert any("--field-config=field-path=status,order=ascending" in t for t in text)
    assert any("notifications create gs://bookcast-prod-bookcast-uploads" in t and "--object-prefix=sales/" in t
               for t in text)
