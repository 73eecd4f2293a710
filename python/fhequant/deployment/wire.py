"""The byte format of a batch of serialized ciphertexts (no pickle, checked on read).

The compiled circuit takes one row at a time, so a batch of ``n`` rows is ``n`` calls, each
with one concrete ``Value`` per circuit argument (results: one per output). A batch travels
as one ``bytes`` object::

    b"FHQCT" | version (1 byte) | header length (4 bytes, big endian) | header (JSON, UTF-8)
            | the values' bytes, concatenated row by row, argument by argument

where the header is ``{"rows": n, "values_per_row": k, "sizes": [[size, ...], ...]}``. The
reader checks the magic, the version, the header's types, and that the sizes add up to the
bytes that follow exactly, so a truncated or padded message is refused before concrete sees
it. Each value's own bytes are checked by concrete when it is deserialized.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import cast

from fhequant.errors import CiphertextError

__all__ = ["MAGIC", "WIRE_VERSION", "pack_rows", "unpack_rows"]

MAGIC = b"FHQCT"
WIRE_VERSION = 1
_PREFIX = struct.Struct(">5sBI")
#: A header this long would describe millions of values; longer ones are refused unread.
MAX_HEADER_BYTES = 16 * 1024 * 1024


def pack_rows(rows: Sequence[Sequence[bytes]]) -> bytes:
    """Pack serialized values, one sequence per row, into one message.

    Args:
        rows: for each row, the serialized values (one per circuit argument or output).

    Returns:
        The message bytes.
    """
    if not rows:
        raise CiphertextError("no rows to send; give at least one row")
    width = len(rows[0])
    if width == 0 or any(len(row) != width for row in rows):
        raise CiphertextError("every row must hold the same, non-zero number of values")
    header = json.dumps(
        {"rows": len(rows), "values_per_row": width, "sizes": [[len(v) for v in r] for r in rows]},
        separators=(",", ":"),
    ).encode("utf-8")
    return b"".join(
        [_PREFIX.pack(MAGIC, WIRE_VERSION, len(header)), header, *(b for r in rows for b in r)]
    )


def _header(data: bytes, what: str) -> tuple[dict[str, object], int]:
    if len(data) < _PREFIX.size:
        raise CiphertextError(
            f"{what}: {len(data)} bytes is too short for fhequant's ciphertext format "
            f"(at least {_PREFIX.size}); send the bytes of quantize_encrypt_serialize"
        )
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CiphertextError(
            f"{what}: not fhequant's ciphertext format (wrong magic bytes); send the bytes "
            "of FHEModelClient.quantize_encrypt_serialize"
        )
    if version != WIRE_VERSION:
        raise CiphertextError(
            f"{what}: ciphertext format version {version}, this fhequant reads version "
            f"{WIRE_VERSION}; use the same fhequant version on both sides"
        )
    if length > MAX_HEADER_BYTES or _PREFIX.size + length > len(data):
        raise CiphertextError(f"{what}: truncated message (the header runs past the end)")
    try:
        header = json.loads(data[_PREFIX.size : _PREFIX.size + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CiphertextError(f"{what}: the message header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CiphertextError(f"{what}: the message header is not a JSON object")
    return header, _PREFIX.size + length


def _non_negative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def unpack_rows(
    data: bytes, values_per_row: int | None = None, what: str = "ciphertexts"
) -> list[list[bytes]]:
    """Split a message into its rows of serialized values, checking its structure.

    Args:
        data: the message.
        values_per_row: the number of values each row must hold (None: any).
        what: what the message is, for error messages.

    Returns:
        One list of value bytes per row, in order.

    Raises:
        CiphertextError: anything malformed, truncated or of the wrong width.
    """
    data = bytes(data)
    header, offset = _header(data, what)
    rows, width, sizes = header.get("rows"), header.get("values_per_row"), header.get("sizes")
    if not (_non_negative_int(rows) and _non_negative_int(width) and isinstance(sizes, list)):
        raise CiphertextError(f"{what}: the message header lacks rows / values_per_row / sizes")
    rows, width = cast(int, rows), cast(int, width)
    if rows == 0 or width == 0:
        raise CiphertextError(f"{what}: the message holds no values")
    if len(sizes) != rows or any(
        not isinstance(r, list) or len(r) != width or not all(_non_negative_int(s) for s in r)
        for r in sizes
    ):
        raise CiphertextError(f"{what}: the sizes in the header do not match rows x values")
    if values_per_row is not None and width != values_per_row:
        raise CiphertextError(
            f"{what}: {width} value(s) per row, the model takes {values_per_row}; encrypt "
            "with the client of this model"
        )
    total = sum(sum(r) for r in sizes)
    available = len(data) - offset
    if total != available:
        state = "truncated" if available < total else "followed by extra bytes"
        raise CiphertextError(
            f"{what}: message {state}: the header announces {total} bytes of values, "
            f"{available} follow"
        )
    out: list[list[bytes]] = []
    for row in sizes:
        values = []
        for size in row:
            values.append(data[offset : offset + size])
            offset += size
        out.append(values)
    return out
