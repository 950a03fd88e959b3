"""Bounded gzip decompression, recognised by the bytes (1f 8b), never by the file name (SPEC 2)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator

from usage_pipeline.core.ingest.spool import Body, SpooledFile, Spooler, pieces

GZIP_MAGIC = b"\x1f\x8b"
# gzip inside gzip is opened again through the same bound, this many layers at most.
MAX_GZIP_LAYERS = 3
# Input fed to zlib and output taken from it per call: the memory a bomb can take beyond the limit.
_PIECE = 1 << 20


class TooLarge(Exception):
    """The file expands past the limit."""


class BadGzip(Exception):
    """The bytes are not valid gzip; the message says where."""


def decompress(data: Body, limit: int, spool_over: int | None = None) -> tuple[Body, int]:
    """(the bytes inside every gzip layer, number of layers); `data` itself when it is not gzip.

    No layer may produce more than `limit` bytes (else TooLarge). Layers are streamed into one another and
    only the innermost output is kept, 1 MiB at a time: in memory up to `spool_over` bytes (None: any
    size), beyond that in a temporary file on local disk. So a bomb costs a few MiB of memory beyond
    `limit` or `spool_over`, whichever is smaller (a file within both is copied once more into bytes).
    """
    stream: Iterator[bytes] = pieces(data, _PIECE) if isinstance(data, SpooledFile) else _pieces(data)
    layers = 0
    head, stream = _peek(stream, len(GZIP_MAGIC))
    while head == GZIP_MAGIC:
        layers += 1
        if layers > MAX_GZIP_LAYERS:
            raise BadGzip(f"it holds gzip inside gzip more than {MAX_GZIP_LAYERS} layers deep")
        stream = _inflate(stream, limit, layers)
        head, stream = _peek(stream, len(GZIP_MAGIC))
    if layers == 0:
        return data, 0
    with Spooler(limit if spool_over is None else spool_over) as out:
        return out.write_all(stream).finish(), layers


def _pieces(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), _PIECE):
        yield bytes(view[start : start + _PIECE])


def _peek(stream: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """The first `size` bytes of the stream (fewer at its end), and the stream with them put back."""
    taken: list[bytes] = []
    have = 0
    for piece in stream:
        taken.append(piece)
        have += len(piece)
        if have >= size:
            break
    head = b"".join(taken)[:size]
    return head, itertools.chain(taken, stream)


def _inflate(stream: Iterator[bytes], limit: int, layer: int) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (every member, in order), at most `limit` of them."""
    where = "" if layer == 1 else f" (in gzip layer {layer})"
    member = zlib.decompressobj(wbits=31)
    member_started = False
    padding = False  # zero bytes after the last member, as some writers leave them
    consumed = 0  # compressed bytes read so far, for the error messages
    produced = 0
    for piece in stream:
        buffer = piece
        while buffer:
            if padding:
                if buffer.strip(b"\x00"):
                    raise BadGzip(f"non-zero bytes follow the zero padding after its last member{where}")
                consumed += len(buffer)
                break
            if member.eof:
                if not buffer.strip(b"\x00"):  # padding, not another member
                    padding = True
                    continue
                if not buffer.startswith(GZIP_MAGIC[: len(buffer)]):
                    raise BadGzip(
                        f"the bytes from compressed byte {consumed:,} on, after its end, are not gzip{where}"
                    )
                member, member_started = zlib.decompressobj(wbits=31), False
            try:
                out = member.decompress(buffer, _PIECE)
            except zlib.error as exc:
                raise BadGzip(f"{exc} at or after compressed byte {consumed:,}{where}") from None
            member_started = True
            rest = member.unused_data if member.eof else member.unconsumed_tail
            consumed += len(buffer) - len(rest)
            buffer = rest
            if out:
                produced += len(out)
                if produced > limit:
                    raise TooLarge
                yield out
        # zlib may still hold output for input it has consumed.
        while not member.eof and member_started:
            out = member.decompress(b"", _PIECE)
            if not out:
                break
            produced += len(out)
            if produced > limit:
                raise TooLarge
            yield out
    if member_started and not member.eof:
        raise BadGzip(
            f"the compressed data ends after {consumed:,} bytes, before the end-of-stream marker{where}"
        )
