"""Turning plain results into Dagster UI metadata: markdown tables and check results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

MAX_CELL = 120


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def md_text(headers: Sequence[str], rows: Iterable[Sequence[object]], limit: int = 50) -> str:
    """A markdown table (pipes escaped, long cells cut), with a note of how many rows were left out."""
    all_rows = list(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in all_rows[:limit]]
    if len(all_rows) > limit:
        lines.append(f"\n… and {len(all_rows) - limit} more")
    return "\n".join(lines)


def md_table(rows: Sequence[Mapping[str, object]], limit: int = 50) -> dg.MetadataValue:
    """Dict rows (keys are the columns) as a markdown table for the check/materialization pane."""
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = list(rows[0].keys())
    return dg.MetadataValue.md(md_text(columns, ([row.get(c) for c in columns] for row in rows), limit))


def check_result(
    *,
    asset_key: str,
    check_name: str,
    passed: bool,
    severity: dg.AssetCheckSeverity,
    summary: str,
    counts: Mapping[str, int] | None = None,
    examples: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
) -> dg.AssetCheckResult:
    metadata: dict[str, object] = {"summary": dg.MetadataValue.text(summary)}
    metadata.update({name: dg.MetadataValue.int(value) for name, value in (counts or {}).items()})
    metadata.update({name: md_table(rows) for name, rows in (examples or {}).items() if rows})
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=passed,
        severity=severity,
        description=summary,
        metadata=metadata,
    )
