"""Finding new file versions under the prefix with a bounded amount of listing work per sensor tick.

S3 lists keys in key order, not time order, so a complete answer needs a full listing. A *pass* is one
full listing of the prefix, spread over as many ticks as it takes (each tick lists for a bounded time and
requests a bounded number of files, then records where it stopped). A version is a candidate when its
LastModified is at or after the watermark and it is not in `recent` (versions already requested). When a
pass completes, the watermark moves to the pass's start time minus an overlap that covers clock skew and
same-second uploads: every version that existed when the pass started was seen by it, and anything newer
is within the overlap of the next pass. `recent` only needs versions at or after the watermark, so it stays
as small as the recent arrivals.

Discovery only proposes versions. What is done is decided by the ledger (see `pending`): a proposed
version stays pending, and is requested again with backoff, until it has a ledger row.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from usage_pipeline.core.ingest.model import FileVersion, arrival_order

ListPage = Callable[[str | None], tuple[list[FileVersion], bool]]


def version_digest(file: FileVersion) -> str:
    """A short, stable name for a file version, to keep the cursor small."""
    return hashlib.sha1(f"{file.key}\0{file.etag}".encode()).hexdigest()[:16]


@dataclass
class ListingCursor:
    watermark: float = 0.0  # epoch seconds; versions older than this were all requested
    pass_started: float | None = None  # epoch seconds the current pass began; None = no pass under way
    pass_after: str | None = None  # last key decided in the current pass
    recent: dict[str, float] = field(default_factory=dict)  # version digest -> LastModified (epoch s)
    passes_completed: int = 0
    # Versions proposed but not yet seen in the ledger: digest -> PendingVersion fields (see pending.py).
    pending: dict[str, list] = field(default_factory=dict)
    requests: int = 0  # run requests made so far: numbers each run key, so no key is ever reused

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ListingCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class DiscoveryLimits:
    run_max_files: int = 500
    run_max_bytes: int = 10 * 10**9
    tick_max_runs: int = 4
    tick_list_seconds: float = 30.0
    overlap: timedelta = timedelta(minutes=15)
    max_file_bytes: int = 1 << 30


@dataclass
class TickPlan:
    batches: list[list[FileVersion]]
    cursor: ListingCursor
    keys_listed: int
    pass_completed: bool
    # Listed versions below the watermark and not pending: done unless the ledger says otherwise.
    older: list[FileVersion] = field(default_factory=list)

    @property
    def candidates(self) -> list[FileVersion]:
        return [f for batch in self.batches for f in batch]


def _epoch(value: datetime) -> float:
    return value.astimezone(UTC).timestamp()


def batch_files(files: list[FileVersion], limits: DiscoveryLimits) -> list[list[FileVersion]]:
    """Split candidates, in arrival order, into runs of at most run_max_files files / run_max_bytes.

    Files over the size limit are never downloaded (they only get a ledger row), so they weigh nothing.
    """
    batches: list[list[FileVersion]] = []
    current: list[FileVersion] = []
    current_bytes = 0
    for file in arrival_order(files):
        weight = file.size if file.size <= limits.max_file_bytes else 0
        if current and (
            len(current) >= limits.run_max_files or current_bytes + weight > limits.run_max_bytes
        ):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(file)
        current_bytes += weight
    if current:
        batches.append(current)
    return batches


def plan_tick(
    list_page: ListPage,
    cursor: ListingCursor,
    limits: DiscoveryLimits,
    now: datetime,
    clock: Callable[[], float] = time.monotonic,
) -> TickPlan:
    """One tick of discovery: continue (or start) a listing pass and pick the versions to request."""
    state = ListingCursor(**json.loads(cursor.to_json()))  # never mutate the caller's cursor
    if state.pass_started is None:
        state.pass_started = _epoch(now)
        state.pass_after = None
    max_files = limits.tick_max_runs * limits.run_max_files
    max_bytes = limits.tick_max_runs * limits.run_max_bytes
    deadline = clock() + limits.tick_list_seconds
    candidates: list[FileVersion] = []
    older: list[FileVersion] = []
    candidate_bytes = 0
    listed = 0
    completed = False
    full = False
    while not full:
        page, more = list_page(state.pass_after)
        for file in page:
            listed += 1
            digest = version_digest(file)
            if digest in state.pending:
                pass
            elif _epoch(file.last_modified) < state.watermark:
                older.append(file)
            elif digest not in state.recent:
                weight = file.size if file.size <= limits.max_file_bytes else 0
                if candidates and (len(candidates) >= max_files or candidate_bytes + weight > max_bytes):
                    full = True  # this key is left for the next tick: pass_after stays before it
                    break
                candidates.append(file)
                candidate_bytes += weight
            state.pass_after = file.key
        if full:
            break
        if not more:
            completed = True
            break
        if clock() >= deadline:
            break
    for file in candidates:
        state.recent[version_digest(file)] = _epoch(file.last_modified)
    if completed:
        state.watermark = max(state.watermark, state.pass_started - limits.overlap.total_seconds())
        state.pass_started = None
        state.pass_after = None
        state.passes_completed += 1
    state.recent = {d: lm for d, lm in state.recent.items() if lm >= state.watermark}
    return TickPlan(batch_files(candidates, limits), state, listed, completed, older)
