"""The per-gateway limits' rules (:mod:`processor.limits`) and how the preparer applies them:
each limit refuses the right readings with ``limit_exceeded``, counted per limit, and leaves
the other readings of the message to be stored and every seq acknowledged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson

from processor.limits import (
    CHARGERS_PER_GATEWAY,
    CONNECTOR_ID,
    EVSE_ID,
    NEW_CHARGERS_PER_HOUR,
    VALUE_KEYS_PER_CHARGER,
    GatewayLimits,
    LimitSettings,
)
from processor.prepare import Preparer
from processor.state.bindings import Bindings
from processor.validate import LIMIT_EXCEEDED, TsWindow
from telemetry_common.mqtt import Received
from telemetry_common.schema import ReadingRow
from telemetry_common.topics import Topics

WINDOW = TsWindow(timedelta(days=1), timedelta(days=36_500))
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def row(charger: str, values: dict[str, float] | None = None, evse: int = 1, conn: int = 1) -> Any:
    return {
        "charger_id": charger,
        "evse_id": evse,
        "connector_id": conn,
        "values": values if values is not None else {"power_w": 1.0},
    }


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def check(limits: GatewayLimits, gateway: str, rows: list[Any]) -> list[tuple[int, str]]:
    typed = cast(list[ReadingRow], rows)
    return [(o.row, o.limit) for o in limits.check(gateway, typed, [r["charger_id"] for r in rows])]


def test_chargers_per_gateway_caps_distinct_chargers_and_known_ones_pass() -> None:
    lim = GatewayLimits(LimitSettings(chargers_per_gateway=2, new_chargers_per_hour=0))
    assert check(lim, "gw", [row("a"), row("b"), row("c"), row("a"), row("c")]) == [
        (2, CHARGERS_PER_GATEWAY),
        (4, CHARGERS_PER_GATEWAY),
    ]
    assert lim.chargers("gw") == 2
    assert check(lim, "gw-2", [row("c")]) == []  # per gateway


def test_new_chargers_per_hour_is_a_sliding_window_and_bound_chargers_are_not_new() -> None:
    clock = Clock()
    bound = {"p": "gw"}
    lim = GatewayLimits(LimitSettings(new_chargers_per_hour=2), bound_to=bound.get, clock=clock)
    assert check(lim, "gw", [row("a"), row("b"), row("c"), row("p")]) == [
        (2, NEW_CHARGERS_PER_HOUR)
    ]
    clock.t += 1800
    assert check(lim, "gw", [row("c")]) == [(0, NEW_CHARGERS_PER_HOUR)]
    clock.t += 1801  # a and b were added over an hour ago
    assert check(lim, "gw", [row("c"), row("d"), row("e")]) == [(2, NEW_CHARGERS_PER_HOUR)]


def test_seeded_chargers_are_never_new() -> None:
    """After a restart the chargers whose newest reading is stored are seeded: known, so
    neither the hourly budget nor the cap refuses them (the cap counts them)."""
    lim = GatewayLimits(LimitSettings(chargers_per_gateway=3, new_chargers_per_hour=1))
    assert lim.seed([("a", "gw"), ("b", "gw"), ("x", "gw-2")]) == 3
    assert check(lim, "gw", [row("a"), row("b"), row("c"), row("d")]) == [(3, CHARGERS_PER_GATEWAY)]
    assert check(lim, "gw-2", [row("x"), row("y"), row("z")]) == [(2, NEW_CHARGERS_PER_HOUR)]


def test_value_keys_per_charger() -> None:
    lim = GatewayLimits(LimitSettings(value_keys_per_charger=3))
    rows = [
        row("a", {"k1": 1.0, "k2": 2.0}),
        row("a", {"k1": 1.0, "k3": 2.0}),
        row("a", {"k4": 1.0}),  # a fourth key: refused
        row("a", {"k2": 1.0, "k3": 1.0}),
        row("b", {"k4": 1.0, "k5": 1.0, "k6": 1.0}),  # another charger has its own keys
    ]
    assert check(lim, "gw", rows) == [(2, VALUE_KEYS_PER_CHARGER)]


def test_evse_and_connector_ranges() -> None:
    lim = GatewayLimits(LimitSettings(evse_id=2, connector_id=3))
    rows = [row("a", evse=2, conn=3), row("a", evse=3), row("a", conn=4), row("a", evse=0, conn=0)]
    assert check(lim, "gw", rows) == [(1, EVSE_ID), (2, CONNECTOR_ID)]


def msg(gateway: str, readings: list[dict[str, Any]]) -> Received:
    for k, r in enumerate(readings, 1):
        r.setdefault("seq", k)
        r.setdefault("ts", (T0 + timedelta(milliseconds=k)).isoformat())
    body = {"gateway_id": gateway, "readings": readings}
    return Received(f"chargers/v1/{gateway}/readings", orjson.dumps(body), 1, 1, 1)


async def test_the_preparer_dead_letters_over_a_limit_and_handles_every_seq() -> None:
    """A message with readings over three limits: each is dead-lettered ``limit_exceeded``
    with its index and reading, counted per limit; the others become lines; every seq of the
    message is handled (acknowledged once committed); a refused charger is not bound
    (first-come) and a charger bound to another gateway keeps ``charger_not_bound``."""
    bindings = Bindings(first_come=True)
    bindings.claim("gw-other", "taken")
    limits = GatewayLimits(
        LimitSettings(chargers_per_gateway=2, value_keys_per_charger=2, evse_id=4),
        bound_to=bindings.get,
    )
    p = Preparer(bindings, Topics(), WINDOW, limits=limits)
    readings = [
        row("a"),
        row("b", evse=5),
        row("taken"),
        row("b", {"x": 1.0, "y": 1.0, "z": 1.0}),
        row("c"),
        row("a", {"power_w": 2.0}),
    ]
    m = msg("gw", readings)
    batch = await p.prepare([m])
    sent = orjson.loads(m.payload)["readings"]
    [(_, _, record)] = batch.dead  # one record for the message (bulk dead letters)
    assert record.reason == LIMIT_EXCEEDED  # the most common reason of the four
    assert [(i, reason, detail.split(":")[0]) for i, reason, detail in record.faults] == [
        (1, LIMIT_EXCEEDED, EVSE_ID),
        (2, "charger_not_bound", "charger 'taken' is bound to gateway 'gw-other'"),
        (3, LIMIT_EXCEEDED, VALUE_KEYS_PER_CHARGER),
        (4, LIMIT_EXCEEDED, CHARGERS_PER_GATEWAY),
    ]
    assert orjson.loads(record.raw) == sent[1:5]  # the refused readings, in payload order
    assert batch.limits == {EVSE_ID: 1, VALUE_KEYS_PER_CHARGER: 1, CHARGERS_PER_GATEWAY: 1}
    assert [s.seqs for s in batch.segments] == [[1, 6]]
    assert len(batch.lines) == 2
    assert batch.handled == [("gw", None, [1, 2, 3, 4, 5, 6])]
    assert bindings.get("a") == "gw"
    assert bindings.get("b") is None  # none of its readings accepted: not bound
    assert bindings.get("c") is None


def test_influxdb_cardinality_refusals_are_recognised_by_their_text() -> None:
    """The texts InfluxDB 1.6 answers (seen with low limits in its config), and others not."""
    from processor.limits import INFLUX_MAX_SERIES_PER_DATABASE, INFLUX_MAX_VALUES_PER_TAG
    from processor.outputs.influx import cardinality_limit

    values = (
        '{"error":"partial write: max-values-per-tag limit exceeded (9/5): '
        'measurement=\\"readings\\" tag=\\"charger_id\\" value=\\"c99\\" dropped=1"}'
    )
    series = '{"error":"partial write: max-series-per-database limit exceeded: (12) dropped=10"}'
    conflict = (
        '{"error":"partial write: field type conflict: input field \\"power_w\\" on '
        'measurement \\"readings\\" is type float, already exists as type string dropped=1"}'
    )
    assert cardinality_limit(values) == INFLUX_MAX_VALUES_PER_TAG
    assert cardinality_limit(series) == INFLUX_MAX_SERIES_PER_DATABASE
    assert cardinality_limit(conflict) is None
