"""The vocabulary has one home each: collection names in shared/layout.py, registry tags in
shared/version_tags.py, statuses in shared/states.py. Code elsewhere that spells one of
them as a bare string is found here, before a typo becomes a document nobody reads."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWNERS = {"shared/states.py", "shared/layout.py", "shared/version_tags.py"}
COLLECTIONS = ("runs|run_parts|shards|snapshots|causes|messages|rejections|series|decisions|degradation|leases|"
               "follow_ups|champions|alias_history|alias_backups|audit|alerts|alert_counts|challenges|"
               "shadow_scores|approvals|groups")
TAGS = ("kind|family|spec|baseline|quarantined|quarantine_reason|gate|data_hash|fitted_at|refreshes|unseen_weeks|"
        "unseen_abs_error|train_window_start|train_window_end|holdout_weeks|pipeline_run_id|code_version")
BARE = {
    "a collection named by a string": re.compile(
        rf"""(\b(store|self|db\(\)|_store\(cfg\))\.(col|get|stream|read_batched)|\.collection)\(\s*["']({COLLECTIONS})["']"""),
    "a registry tag read by a string": re.compile(rf"""tags(\.get\(|\[)\s*["']({TAGS})["']"""),
    "a metric tag spelled out": re.compile(r"""f?["']metric\."""),
    "a status compared with a string": re.compile(r"""(status["']?\]?\)?\s*(==|!=|in)\s*\(?["'])|(\bstatus=["'])"""),
    "an outcome made from a string": re.compile(r"""\bOutcome\(\s*["']"""),
}


def sources() -> list[Path]:
    return sorted(p for folder in ("shared", "functions", "emulators", "bench", "deploy")
                  for p in (ROOT / folder).rglob("*.py") if str(p.relative_to(ROOT)) not in OWNERS)


def bare_words(text: str) -> list[tuple[int, str]]:
    return [(number, what) for number, line in enumerate(text.splitlines(), 1)
            for what, pattern in BARE.items() if pattern.search(line)]


def test_no_collection_tag_or_status_is_spelled_outside_its_owner():
    found = [f"{path.relative_to(ROOT)}:{number}: {what}" for path in sources()
             for number, what in bare_words(path.read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("line", [
    'store.col("runs").document(run_id)', 'champion.tags.get("baseline") == "true"', 'tags["metric.mae"]',
    'if run["status"] == "failed":', 'IsbnResult(isbn=isbn, status="refused")', 'return Outcome("duplicate", why)'])
def test_the_guard_sees_each_kind_of_bare_word(line):
    assert bare_words(line)
