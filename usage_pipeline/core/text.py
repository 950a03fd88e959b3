"""Words for people: counted nouns in messages and descriptions ("1 file", "2 files")."""

from __future__ import annotations


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """`count` and the noun in the right number: `plural(1, "file")` is "1 file", `plural(2, "file")`
    "2 files"; irregular nouns pass their plural (`plural(n, "entry", "entries")`)."""
    word = noun if count == 1 else plural_noun or f"{noun}s"
    return f"{count:,} {word}"
