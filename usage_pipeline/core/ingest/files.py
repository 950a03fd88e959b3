"""Which format a file version is in, from its name and size, before any byte is read (SPEC 2)."""

from __future__ import annotations

from usage_pipeline.core.ingest.model import REASON_TOO_LARGE, REASON_UNSUPPORTED, FileVersion

MAX_NAME_CHARS = 255

# Extension (lower case) -> format; each may also end in ".gz".
_EXTENSIONS: dict[str, str] = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def classify_file(file: FileVersion, max_file_bytes: int) -> tuple[str | None, str | None, str | None]:
    """(format, failed_reason, failed_detail); format is e.g. "csv" or "jsonl.gz", a reason means skip it."""
    name = file.key.rsplit("/", 1)[-1]
    if len(name) > MAX_NAME_CHARS:
        return (
            None,
            REASON_UNSUPPORTED,
            f"The file name is {len(name)} characters long; names over {MAX_NAME_CHARS} characters "
            "are not ingested.",
        )
    lowered = name.lower()
    gzipped = lowered.endswith(".gz")
    stem = lowered.removesuffix(".gz")
    fmt = next((f for ext, f in _EXTENSIONS.items() if stem.endswith(ext)), None)
    if fmt is None:
        return (
            None,
            REASON_UNSUPPORTED,
            f"The file name {name!r} does not end in .csv, .json, .jsonl or .ndjson (optionally followed "
            "by .gz), so it is not ingested.",
        )
    if gzipped:
        fmt += ".gz"
    if file.size > max_file_bytes:
        return (
            fmt,
            REASON_TOO_LARGE,
            f"The file is {file.size:,} bytes; the limit is {max_file_bytes:,} bytes (USAGE_MAX_FILE_BYTES).",
        )
    return fmt, None, None
