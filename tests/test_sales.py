"""The upload format: every rule, with the file, row and rule named."""
from __future__ import annotations

import io
from datetime import date

import pandas as pd
import pytest

from shared import isbn
from shared.sales import UploadRejected, UploadRules, merge, parse_upload, series_hash, weeks_of
from shared.sample_data import generate

RULES = UploadRules(today=date(2026, 11, 24))


def reasons(name: str, content: bytes) -> list[str]:
    with pytest.raises(UploadRejected) as rejected:
        parse_upload(name, content, RULES)
    return rejected.value.reasons


def test_sample_generator_makes_valid_isbns_and_a_christmas_peak():
    frame = generate(12, 4, end=date(2026, 11, 23))
    assert frame["isbn"].nunique() == 12 and all(isbn.is_valid(i) for i in frame["isbn"].unique())
    assert (frame["units"] == 0).any()
    by_month = frame.assign(month=pd.to_datetime(frame["week"]).dt.month).groupby("month")["units"].mean()
    assert by_month.idxmax() == 12


def test_csv_and_parquet_parse_to_the_same_rows():
    frame = generate(2, 1, end=date(2026, 11, 23))
    csv = frame.to_csv(index=False).encode("utf-8-sig")  # with a BOM, as spreadsheets write it
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    from_csv = parse_upload("sales/a.csv", csv, RULES)
    from_parquet = parse_upload("sales/a.parquet", buffer.getvalue(), RULES)
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    assert len(from_csv) == len(frame)


def test_every_bad_row_is_named_with_its_rule():
    content = (b"isbn,week,units\n"
               b"9780306406157,2026-11-09,5\n"
               b"9780306406158,2026-11-09,5\n"       # bad check digit
               b"12345,2026-11-09,5\n"               # not an ISBN-13
               b"9780306406157,2026-11-10,5\n"       # a Tuesday
               b"9780306406157,2026-12-07,5\n"       # future
               b"9780306406157,someday,5\n"          # not a date
               b"9780306406157,2026-11-16,-1\n"      # negative
               b"9780306406157,2026-11-16,2.5\n"     # not whole
               b"9780306406157,2026-11-16,many\n"    # not a number
               b"9780306406157,2026-11-16,9999999\n"  # absurd
               b"9780306406157,2026-11-09,6\n")      # duplicate week
    found = reasons("sales/bad.csv", content)
    expected = ["sales/bad.csv:3: isbn:", "sales/bad.csv:4: isbn:", "sales/bad.csv:5: week:", "sales/bad.csv:6: week:",
                "sales/bad.csv:7: week:", "sales/bad.csv:8: units: negative", "sales/bad.csv:9: units:",
                "sales/bad.csv:10: units:", "sales/bad.csv:11: units:", "sales/bad.csv: duplicate: 9780306406157"]
    for prefix in expected:
        assert any(r.startswith(prefix) for r in found), (prefix, found)


@pytest.mark.parametrize("name, content, rule", [
    ("other/a.csv", b"isbn,week,units\n", "location"),
    ("sales/a.txt", b"isbn,week,units\n", "format"),
    ("sales/a.csv", b"\xff\xfe\x00bad", "encoding"),
    ("sales/a.csv", b"isbn,units\n9780306406157,4\n", "schema: missing column(s) ['week']"),
    ("sales/a.csv", b"isbn,week,units\n", "schema: no data rows"),
    ("sales/a.parquet", b"not parquet", "format: not a readable Parquet"),
    ("sales/a.csv", b"isbn,week,units\n9780306406157,2026-11-02,1\n9780306406157,2026-11-16,1\n", "gap:"),
])
def test_file_level_rules(name, content, rule):
    assert rule in reasons(name, content)[0]


def test_size_limit():
    small = UploadRules(max_bytes=1024, today=date(2026, 11, 24))
    with pytest.raises(UploadRejected, match="size"):
        parse_upload("sales/big.csv", b"x" * 2048, small)


def test_later_uploads_override_week_by_week_and_hash_ignores_file_order():
    first = pd.DataFrame({"isbn": ["9780306406157"] * 2, "week": [date(2026, 11, 9), date(2026, 11, 16)], "units": [1, 2]})
    correction = pd.DataFrame({"isbn": ["9780306406157"], "week": [date(2026, 11, 16)], "units": [7]})
    merged = merge([first, correction])
    assert merged["units"].tolist() == [1, 7]
    assert series_hash(weeks_of(merged)) == series_hash(weeks_of(merged.iloc[::-1]))
    assert series_hash(weeks_of(merged)) != series_hash(weeks_of(first))


def test_cli_refuses_to_upload_a_bad_file_and_says_why(tmp_path, capsys):
    from shared.cli import main

    bad = tmp_path / "w47.csv"
    bad.write_text("isbn,week,units\n9780306406157,2026-11-16,-4\n")
    assert main(["upload", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "nothing was uploaded" in out and "sales/w47.csv:2: units: negative value -4" in out
