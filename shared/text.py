"""Untrusted text on its way into our records and messages: quoted short, cut to fit.

Cells of an upload, reasons and free-text fields end up in Firestore documents (1 MiB
each), Pub/Sub messages and alerts; one place decides how much of them survives.
"""
from __future__ import annotations

MAX_QUOTED_CHARS = 40


def quoted(raw: object) -> str:
    """``raw`` as a reason quotes it: its repr, cut so that a 100k-character cell cannot
    make a stored rejection exceed Firestore's document limit."""
    text = repr(raw)
    return text if len(text) <= MAX_QUOTED_CHARS else f"{text[:MAX_QUOTED_CHARS]}...({len(text)} chars)"


def clip(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of UTF-8, saying so when cut."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    marker = f"... [cut: {len(encoded)} bytes]"
    return encoded[:max_bytes - len(marker)].decode(errors="ignore") + marker


def slack_escaped(text: str) -> str:
    """Text as Slack shows it literally: its control sequences (``<!channel>``, ``<url|label>``,
    ``<@user>``) start with '<', so the three characters Slack reserves are escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def one_line(text: str) -> str:
    """For a mail header: line breaks would start new headers (or make the send fail)."""
    return " ".join(text.split())


def shortened(text: str, max_chars: int) -> str:
    """At most ``max_chars`` for a table cell, cut at a word boundary with an ellipsis, never
    inside a word (a cut that leaves a word half-printed reads as a different word)."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > 0 else cut).rstrip(" ,;:") + "…"
