"""The stored acknowledgement of docs/design.md ("Stored acknowledgements"), encoded and decoded
only here: ``{"epoch": null | "<16 hex>", "seqs": [[first, last], ...]}``, inclusive ranges of
the seqs a bridge stored (as readings or as dead letters). The bridge writes it
(:mod:`processor.outputs.acks`); the edge agent and the API's HTTP ingest read it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson


def to_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Inclusive ``[first, last]`` ranges of ``seqs`` (any order, repeats allowed), ascending."""
    ranges: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    return ranges


def encode(epoch: str | None, seqs: Iterable[int]) -> bytes:
    return orjson.dumps({"epoch": epoch, "seqs": to_ranges(seqs)})


def decode(
    payload: bytes, *, max_ranges: int | None = None
) -> tuple[str | None, list[tuple[int, int]]]:
    """The epoch and the ``(first, last)`` ranges of an acknowledgement; ValueError if it is not
    one (or has more than ``max_ranges`` ranges)."""
    try:
        body: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = None
    epoch = body.get("epoch") if isinstance(body, dict) else 0
    ranges = body.get("seqs") if isinstance(body, dict) else None
    if (
        not (epoch is None or isinstance(epoch, str))
        or not isinstance(ranges, list)
        or (max_ranges is not None and len(ranges) > max_ranges)
    ):
        raise ValueError(f"not a stored acknowledgement: {payload[:100]!r}")
    out: list[tuple[int, int]] = []
    for item in ranges:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(type(v) is int for v in item)
            or not 0 <= item[0] <= item[1]
        ):
            raise ValueError(f"not a stored acknowledgement: {payload[:100]!r}")
        out.append((item[0], item[1]))
    return epoch, out
