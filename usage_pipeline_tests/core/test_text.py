"""Words for people: counted nouns, and failure details shortened between words."""

from __future__ import annotations

import pytest

from usage_pipeline.core.ingest.store import FileOutcome, describe_outcome
from usage_pipeline.core.text import plural


@pytest.mark.parametrize(
    ("count", "shown"), [(0, "0 files"), (1, "1 file"), (2, "2 files"), (12345, "12,345 files")]
)
def test_plural_counts_the_noun(count: int, shown: str) -> None:
    assert plural(count, "file") == shown


def test_plural_takes_an_irregular_plural() -> None:
    assert plural(1, "entry", "entries") == "1 entry"
    assert plural(3, "entry", "entries") == "3 entries"


def _failed(detail: str) -> FileOutcome:
    return FileOutcome("incoming/a.csv", "etag", 10, "failed", None, "unreadable", detail, 0, 0, 0, 0)


def _detail(line: str) -> str:
    return line.split("unreadable: ", 1)[1]


def test_a_long_detail_is_cut_at_a_word_boundary() -> None:
    detail = "the compressed data ends after 1,024 bytes, before the end-of-stream marker"
    shown = _detail(describe_outcome(_failed(detail), max_detail=40))
    assert shown == "the compressed data ends after 1,024…"
    assert len(shown) <= 40
    assert detail.startswith(shown.removesuffix("…"))


def test_a_short_detail_is_shown_whole_and_without_a_limit_nothing_is_cut() -> None:
    assert _detail(describe_outcome(_failed("bad header"), max_detail=40)) == "bad header"
    long = "word " * 50
    assert _detail(describe_outcome(_failed(long))) == long


def test_a_single_long_word_is_cut_inside_rather_than_dropped() -> None:
    shown = _detail(describe_outcome(_failed("x" * 100), max_detail=20))
    assert shown == "x" * 19 + "…"
