"""The stored acknowledgement of docs/design.md ("Stored acknowledgements"), encoded and decoded
only here: ``{"epoch": null | "<16 hex>", "seqs": [[first, last], ...], "ts": ISO}``, inclusive
ranges of the seqs a bridge stored (as readings or as dead letters), and the bridge's clock when
it sent the acknowledgement (the edge agent compares its own clock with it:
:mod:`edge_agent.clock`). The bridge writes it (:mod:`processor.outputs.acks`); the edge agent
and the API's HTTP ingest read it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
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


def encode(epoch: str | None, seqs: Iterable[int], *, ts: datetime | None = None) -> bytes:
    """The acknowledgement of ``seqs``, stamped ``ts`` (default: now)."""
    stamp = (ts or datetime.now(UTC)).isoformat()
    return orjson.dumps({"epoch": epoch, "seqs": to_ranges(seqs), "ts": stamp})


def sent_at(payload: bytes) -> datetime | None:
    """When the bridge sent the acknowledgement ``payload``, by its clock (None: not said, as
    from a bridge older than the key, or not a time with a timezone)."""
    try:
        body: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    ts = body.get("ts") if isinstance(body, dict) else None
    if not isinstance(ts, str):
        return None
    try:
        at = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


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
