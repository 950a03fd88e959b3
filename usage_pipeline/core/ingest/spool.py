"""A file version's bytes held in memory, or spooled to a temporary file on local disk when they are big."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "Body",
    "SpooledFile",
    "Spooler",
    "body_size",
    "discard",
    "head_bytes",
    "open_body",
    "read_all",
    "spill_folder",
]

# Text read, parsed and validated at a time; also the size above which a body goes to local disk. A file
# of up to this many (decompressed) bytes is read in one piece, as before: most files are small.
DEFAULT_CHUNK_BYTES = 64 << 20
_PIECE = 1 << 20
_PREFIX = "usage-ingest-"


@dataclass
class SpooledFile:
    """Bytes kept in a temporary file of this process; `remove()` deletes it (safe to call twice)."""

    path: Path
    size: int

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return self.size


Body = bytes | SpooledFile


def body_size(body: Body) -> int:
    return len(body)


def open_body(body: Body) -> BinaryIO:
    return body.path.open("rb") if isinstance(body, SpooledFile) else io.BytesIO(body)


def head_bytes(body: Body, n: int) -> bytes:
    if isinstance(body, SpooledFile):
        with body.path.open("rb") as f:
            return f.read(n)
    return body[:n]


def read_all(body: Body) -> bytes:
    """The whole body in memory (the one-piece path)."""
    return body.path.read_bytes() if isinstance(body, SpooledFile) else body


def pieces(body: Body, size: int = _PIECE) -> Iterator[bytes]:
    with open_body(body) as f:
        while piece := f.read(size):
            yield piece


def discard(body: Body) -> None:
    if isinstance(body, SpooledFile):
        body.remove()


class Spooler:
    """Collects bytes in memory up to `spool_over`, then in a temporary file: small bodies stay fast."""

    def __init__(self, spool_over: int) -> None:
        self._limit = spool_over
        self._memory = bytearray()
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self.size = 0

    def write(self, piece: bytes) -> None:
        self.size += len(piece)
        if self._file is None and self.size > self._limit:
            fd, name = tempfile.mkstemp(prefix=_PREFIX, suffix=".body")
            self._file, self._path = os.fdopen(fd, "wb"), Path(name)
            self._file.write(self._memory)
            self._memory = bytearray()
        if self._file is not None:
            self._file.write(piece)
        else:
            self._memory += piece

    def write_all(self, stream: Iterable[bytes]) -> Spooler:
        for piece in stream:
            self.write(piece)
        return self

    def finish(self) -> Body:
        if self._file is None:
            return bytes(self._memory)
        assert self._path is not None
        self._file.close()
        return SpooledFile(self._path, self.size)

    def abandon(self) -> None:
        """Drop what was written (a failed or cut-off transfer)."""
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self._memory = bytearray()

    def __enter__(self) -> Spooler:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.abandon()


def spill_folder() -> Path:
    """A new temporary folder for one file version's parsed chunks."""
    return Path(tempfile.mkdtemp(prefix=_PREFIX))


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
