"""The upload format: every rule, with the file, row and rule named."""
from __future__ import annotations

import io
from datetime import date, datetime, timezone

import pandas as pd
import pytest

from shared import isbn
from shared.sales import (MergedSeries, UploadRejected, UploadRules, merge_uploads, parse_upload, series_hash,
                          upload_order, weeks_of)
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


def test_newest_upload_wins_week_by_week_whatever_the_processing_order():
    first = pd.DataFrame({"isbn": ["9780306406157"] * 2, "week": [date(2026, 11, 9), date(2026, 11, 16)], "units": [1, 2]})
    correction = pd.DataFrame({"isbn": ["9780306406157"], "week": [date(2026, 11, 16)], "units": [7]})
    older = upload_order(datetime(2026, 11, 20, 9, tzinfo=timezone.utc), 1763629200000000)
    newer = upload_order(datetime(2026, 11, 20, 10, tzinfo=timezone.utc), 1763632800000000)
    # The correction sorts before the file it corrects by name ("w47-correction" < "w47.csv")
    # and may be processed first: neither matters, only the upload order does.
    for uploads in ([(older, first), (newer, correction)], [(newer, correction), (older, first)]):
        merged = merge_uploads(uploads)["9780306406157"]
        assert merged.weeks == {"2026-11-09": 1, "2026-11-16": 7}
    assert series_hash(merged.weeks) != series_hash(weeks_of(first))
    # Within the same second, the generation decides.
    same_second = datetime(2026, 11, 20, 10, tzinfo=timezone.utc)
    assert upload_order(same_second, 99) < upload_order(same_second, 100)
    assert MergedSeries({"2026-11-16": 7}, {"2026-11-16": newer}).merged({"2026-11-16": 2}, older).weeks == {"2026-11-16": 7}


@pytest.mark.parametrize("cell, rule", [
    ("nan", "units: 'nan' is not a finite number"),
    ("1e400", "units: '1e400' is not a finite number"),
    ("-inf", "units: '-inf' is not a finite number"),
    ("9" * 100_000, "...(100002 chars) is not a finite number"),
])
def test_hostile_units_are_rejected_with_a_short_reason(cell, rule):
    (reason,) = reasons("sales/h.csv", f"isbn,week,units\n9780306406157,2026-11-16,{cell}\n".encode())
    assert rule in reason and len(reason) < 200


def test_huge_cells_are_quoted_short_so_the_rejection_fits_one_document():
    huge = "x" * 100_000
    rows = "".join(f"{huge},{huge},{huge}\n" for _ in range(20))
    found = reasons("sales/huge.csv", f"isbn,week,units\n{rows}".encode())
    assert len(found) == 20 and sum(len(r.encode()) for r in found) < 10_000
    assert "(100002 chars)" in found[0]


def test_isbn_digits_are_ascii_only_and_weeks_start_in_1970():
    arabic_indic = "٩٧٨٠٣٠٦٤٠٦١٥٧"  # 9780306406157 in Arabic-Indic digits
    fullwidth = "９７８０３０６４０６１５７"
    assert not isbn.is_valid(arabic_indic) and not isbn.is_valid(fullwidth) and isbn.is_valid("9780306406157")
    found = reasons("sales/old.csv", b"isbn,week,units\n9780306406157,1969-12-29,5\n")
    assert found == ["sales/old.csv:2: week: 1969-12-29 is before 1970-01-05"]


def test_a_refused_row_is_not_reported_again_as_a_gap():
    content = (b"isbn,week,units\n9780306406157,2026-11-02,1\n9780306406157,2026-11-09,-1\n"
               b"9780306406157,2026-11-16,1\n")
    assert reasons("sales/neg.csv", content) == ["sales/neg.csv:3: units: negative value -1"]


def test_cli_refuses_to_upload_a_bad_file_and_says_why(tmp_path, capsys):
    from shared.cli import main

    bad = tmp_path / "w47.csv"
    bad.write_text("isbn,week,units\n9780306406157,2026-11-16,-4\n")
    assert main(["upload", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "nothing was uploaded" in out and "sales/w47.csv:2: units: negative value -4" in out
