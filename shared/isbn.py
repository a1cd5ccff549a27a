"""ISBN-13 checks: every ISBN in the system is validated once, at the edge."""
from __future__ import annotations

import re

from shared.text import quoted

# ASCII digits only: \d also matches '٩' and '９', which int() accepts and no publisher means.
_ISBN13 = re.compile(r"^97[89][0-9]{10}$")


def check_digit(first12: str) -> str:
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(first12))
    return str((10 - total % 10) % 10)


def normalise(raw: str) -> str:
    return re.sub(r"[\s-]", "", str(raw))


def problem(raw: str) -> str | None:
    """Why ``raw`` is not a valid ISBN-13, or None when it is."""
    isbn = normalise(raw)
    if not _ISBN13.match(isbn):
        return f"{quoted(raw)} is not an ISBN-13 (13 digits starting 978 or 979)"
    if isbn[-1] != check_digit(isbn[:12]):
        return f"{quoted(raw)} has a bad check digit (expected {check_digit(isbn[:12])})"
    return None


def is_valid(raw: str) -> bool:
    return problem(raw) is None
