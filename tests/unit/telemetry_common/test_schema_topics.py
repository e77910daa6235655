"""The shared contracts: reading schema, id allow-list and topic builders."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from telemetry_common.errors import InvalidIdError, TopicError
from telemetry_common.ids import check_id
from telemetry_common.schema import (
    READING_ROW_VALIDATOR,
    ROWS_VALIDATOR,
    VALUE_KEY_PATTERN,
    VALUE_KEY_SHAPE,
    Reading,
    ReadingBatch,
    encode_batch,
    format_ts,
    row_to_dict,
)
from telemetry_common.storage import RESERVED_VALUE_KEYS
from telemetry_common.topics import Topics

GOOD = {
    "charger_id": "CP-0042",
    "evse_id": 1,
    "connector_id": 1,
    "seq": 1842,
    "ts": "2026-05-01T12:00:00.000Z",
    "status": "Charging",
    "transaction_id": "1234",
    "values": {"energy_wh": 12345.6, "power_w": 7200, "current_l1_a": 31.8},
}


def _reading(**over: object) -> bytes:
    return orjson.dumps({**GOOD, **over})


def test_design_example_round_trips() -> None:
    """The docs/design.md example validates, and encode_batch produces what ReadingBatch
    reads back."""
    r = Reading.model_validate_json(_reading())
    assert r.values["power_w"] == 7200.0
    batch = ReadingBatch.model_validate_json(encode_batch("gw-001", [r]))
    assert batch.gateway_id == "gw-001"
    assert batch.readings == [r]


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"ts": "2026-05-01T12:00:00"}, "naive timestamp"),
        ({"ts": "2300-01-01T00:00:00Z"}, "beyond InfluxDB's range"),
        ({"values": {"power_w": "7200"}}, "number as string"),
        ({"values": {"power_w": 1e300}}, "huge number"),
        ({"values": {"Power": 1.0}}, "bad value key"),
        ({"values": {"seq": 1.0}}, "reserved value key"),
        ({"values": {f"k{i}": 1.0 for i in range(65)}}, "too many keys"),
        ({"charger_id": "CP 42"}, "id outside the allow-list"),
        ({"charger_id": "x" * 65}, "id too long"),
        ({"status": "Sleeping"}, "unknown status"),
        ({"seq": -1}, "negative seq"),
        ({"seq": 1.5}, "float seq"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_invalid_readings_are_refused(override: dict[str, object], why: str) -> None:
    """Every way a reading can be wrong is refused by the strict schema, and by the row
    validators derived from it (the processor's hot path) with the same errors."""
    with pytest.raises(ValidationError) as model:
        Reading.model_validate_json(_reading(**override))
    with pytest.raises(ValidationError) as row:
        READING_ROW_VALIDATOR.validate_json(_reading(**override))
    with pytest.raises(ValidationError) as rows:
        ROWS_VALIDATOR.validate_json(_batch([orjson.loads(_reading()), {**GOOD, **override}]))
    expected = _errors(model.value)
    assert _errors(row.value) == expected
    assert _errors(rows.value) == [(("readings", 1, *loc), t, m) for loc, t, m in expected]


def _batch(items: Sequence[object], **over: object) -> bytes:
    return orjson.dumps(
        {"schema": "charger-telemetry/1", "gateway_id": "gw-1", "readings": items, **over}
    )


def _errors(exc: ValidationError) -> list[tuple[tuple[object, ...], str, str]]:
    return [(tuple(e["loc"]), e["type"], e["msg"]) for e in exc.errors(include_url=False)]


@pytest.mark.parametrize(
    "body",
    [
        {"readings": []},
        {"readings": [GOOD] * 5_001},
        {"schema": "charger-telemetry/2"},
        {"gateway_id": "gw 1"},
        {"extra": True},
    ],
    ids=["empty", "too_many", "schema", "gateway_id", "extra"],
)
def test_row_validator_refuses_bad_envelopes_as_the_model_does(
    body: dict[str, object],
) -> None:
    """The batch row validator is the model's rules without the instances: same verdict, same
    errors."""
    raw = _batch([GOOD], **body)
    with pytest.raises(ValidationError) as model:
        ReadingBatch.model_validate_json(raw)
    with pytest.raises(ValidationError) as rows:
        ROWS_VALIDATOR.validate_json(raw)
    assert _errors(rows.value) == _errors(model.value)


def test_row_validator_yields_what_the_model_holds() -> None:
    """Valid readings (defaults left out, another zone, no status) become rows equal to the
    model's fields, defaults filled in; ``row_to_dict`` renders them as ``reading_to_dict``."""
    variants = [
        GOOD,
        {k: v for k, v in GOOD.items() if k not in ("evse_id", "connector_id", "status")},
        {**GOOD, "ts": "2026-05-01T14:00:00.5+02:00", "transaction_id": None, "values": {}},
    ]
    raw = _batch(variants)
    model = ReadingBatch.model_validate_json(raw)
    batch = ROWS_VALIDATOR.validate_json(raw)
    assert batch["gateway_id"] == model.gateway_id
    assert batch["readings"] == [dict(r) for r in model.readings]
    assert [row_to_dict(r) for r in batch["readings"]] == [
        orjson.loads(encode_batch("gw-1", [r]))["readings"][0] for r in model.readings
    ]


def test_nan_is_refused() -> None:
    """NaN (which JSON encoders emit as a bare token) is not a finite value."""
    raw = _reading().replace(b"7200", b"NaN")
    with pytest.raises(ValidationError):
        Reading.model_validate_json(raw)


def test_ts_in_another_zone_is_the_same_instant() -> None:
    """A timezone-aware ts in another zone keeps its instant; payloads carry it in UTC."""
    r = Reading.model_validate_json(_reading(ts="2026-05-01T14:00:00+02:00"))
    assert r.ts == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert format_ts(r.ts) == "2026-05-01T12:00:00.000Z"


def test_topics_build_and_parse() -> None:
    """Topic builders follow docs/design.md and the readings topic parses back to its gateway."""
    t = Topics()
    assert t.readings("gw-1") == "chargers/v1/gw-1/readings"
    assert t.state("gw-1") == "chargers/v1/gw-1/state"
    assert t.live("CP-1") == "chargers/v1/live/CP-1"
    assert t.deadletter("gw-1") == "chargers/v1/deadletter/gw-1"
    assert t.shared_readings() == "$share/processors/chargers/v1/+/readings"
    assert t.gateway_of_readings("chargers/v1/gw-1/readings") == "gw-1"
    for bad in ("chargers/v1/a/b/readings", "other/gw-1/readings", "chargers/v1/gw-1/state"):
        with pytest.raises(TopicError):
            t.gateway_of_readings(bad)


@pytest.mark.parametrize("bad", ["gw/1", "gw+", "gw#", "", "gw 1", "é"])
def test_ids_with_topic_characters_are_refused(bad: str) -> None:
    """Ids that could escape a topic level or a query are refused before use."""
    with pytest.raises(InvalidIdError):
        check_id("gateway id", bad)
    with pytest.raises(InvalidIdError):
        Topics().readings(bad)


@pytest.mark.parametrize("root", ["", "a/+/b", "a/#", "/a", "a//b"])
def test_bad_topic_roots_are_refused(root: str) -> None:
    """A topic root with wildcards or empty levels is a configuration error."""
    with pytest.raises(TopicError):
        Topics(root)


def test_value_key_pattern_is_the_shape_minus_the_reserved_keys() -> None:
    """The generated value-key pattern (checked inside pydantic-core) accepts exactly the keys
    of the documented shape that are not reserved: every reserved key, its prefixes and
    extensions, and 20,000 random keys agree with the plain definition."""
    rng = random.Random(7)
    alphabet = string.ascii_lowercase + string.digits + "_"
    candidates = set(RESERVED_VALUE_KEYS) | {"", "a", "t" * 63, "t" * 64, "Seq", "1a", "_x"}
    for word in RESERVED_VALUE_KEYS:
        candidates |= {word[:i] for i in range(1, len(word))}
        candidates |= {word + c for c in ("s", "_", "0")} | {"x" + word}
    for _ in range(20_000):
        first = rng.choice(string.ascii_lowercase + "0_A")
        candidates.add(first + "".join(rng.choices(alphabet, k=rng.randint(0, 66))))
    shape = re.compile(VALUE_KEY_SHAPE)
    generated = re.compile(VALUE_KEY_PATTERN)
    for key in candidates:
        expected = bool(shape.match(key)) and key not in RESERVED_VALUE_KEYS
        assert bool(generated.match(key)) == expected, key


def test_a_reserved_value_key_is_refused_with_a_readable_reason() -> None:
    """The error names the rule and the reserved keys, not the generated pattern."""
    with pytest.raises(ValidationError) as info:
        Reading.model_validate_json(_reading(values={"seq": 1.0}))
    message = info.value.errors()[0]["msg"]
    assert "is none of" in message
    assert "seq" in message
    assert "(?:" not in message
