"""Late readings marked for the rollup job (docs/design.md#rollups): a batch's readings older
than ``LATE_AFTER_S`` fall behind the job's own look back, so the bridge says which time range
of which gateway changed (one ``rollup_late`` point per gateway and batch, written before the
batch is acknowledged) and the job recomputes it. A live fleet writes none: its readings are
minutes old at most."""

from __future__ import annotations

from collections.abc import Iterable

from telemetry_common.influx_write import tag_str
from telemetry_common.storage import LATE_AFTER_S, ROLLUP_LATE_MEASUREMENT


def late_lines(messages: Iterable[tuple[str, list[int]]], now_ns: int, *, bridge: str) -> list[str]:
    """``rollup_late`` points for the readings of ``messages`` ((gateway, the readings' ts in
    ns), as stored) older than ``LATE_AFTER_S`` at ``now_ns``: one per gateway, spanning its late
    readings; none when no reading is late (the usual case costs a ``min`` per message)."""
    cutoff = now_ns - LATE_AFTER_S * 1_000_000_000
    spans: dict[str, tuple[int, int]] = {}
    for gateway_id, nss in messages:
        if not nss or min(nss) >= cutoff:
            continue
        late = [ns for ns in nss if ns < cutoff]
        first, last = min(late), max(late)
        held = spans.get(gateway_id)
        spans[gateway_id] = (
            (first, last) if held is None else (min(held[0], first), max(held[1], last))
        )
    return [
        f"{ROLLUP_LATE_MEASUREMENT},bridge={tag_str(bridge)},gateway_id={tag_str(gw)} "
        f"first={first}i,last={last}i {now_ns + k}"
        for k, (gw, (first, last)) in enumerate(sorted(spans.items()))
    ]
