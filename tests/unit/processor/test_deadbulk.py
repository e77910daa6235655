"""Dead letters in bulk: a message's refused readings are one record (processor side), listed
and replayed by the API like the records of one reading written before (pure parts; the real
pipeline: tests/integration/bridge/test_bad_input.py, tests/integration/query_api/
test_deadletters.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson

from processor.outputs.deadletters import (
    MAX_FAULT_DETAILS,
    STORED_CHUNK,
    bulk_of,
    deadletter_lines,
    deadletter_record,
)
from processor.validate import Rejected
from query_api.deadletters import item_of, replay_payload

GW = "gw-1"
TOPIC = "chargers/v1/gw-1/readings"


def reading(i: int) -> bytes:
    return orjson.dumps(
        {"charger_id": f"cp-{i}", "seq": i, "ts": "2026-05-01T12:00:00Z", "values": {"p_w": 1.5}}
    )


def test_the_refused_readings_of_a_message_are_one_record_in_payload_order() -> None:
    """Reason: the most frequent (a tie: the first in payload order); each index keeps its own
    reason and detail; raw is the JSON array of the readings as sent; a whole-message record
    stays as it is."""
    records = [
        Rejected("charger_not_bound", "cp-5 is gw-2's", reading(5), 5, "00000000000000aa"),
        Rejected("invalid_reading", "values.x: bad", reading(1), 1, "00000000000000aa"),
        Rejected("charger_not_bound", "cp-3 is gw-2's", reading(3), 3, "00000000000000aa"),
        Rejected("invalid_json", "not JSON", b"{"),
    ]
    whole, bulk = bulk_of(records)
    assert whole == records[3]
    assert bulk.reason == "charger_not_bound"
    assert bulk.index is None
    assert bulk.epoch == "00000000000000aa"
    assert [(i, r) for i, r, _ in bulk.faults] == [
        (1, "invalid_reading"),
        (3, "charger_not_bound"),
        (5, "charger_not_bound"),
    ]
    assert orjson.loads(bulk.raw) == [orjson.loads(reading(i)) for i in (1, 3, 5)]
    assert bulk.detail.startswith("3 readings refused (charger_not_bound 2, invalid_reading 1)")
    assert bulk_of(records[3:]) == records[3:]


def _row(line: str) -> dict[str, object]:
    """The row ``SELECT *`` answers for one dead-letter line of ours (string fields without
    commas or spaces inside the values we check, escaped quotes undone)."""
    head, _, rest = line.partition(" ")
    fields_text, _, ts = rest.rpartition(" ")
    row: dict[str, object] = {"time": int(ts)}
    for tag in head.split(",")[1:]:
        k, _, v = tag.partition("=")
        row[k] = v
    row.update(_fields(fields_text))
    return row


def _fields(text: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    i = 0
    while i < len(text):
        eq = text.index("=", i)
        key = text[i:eq]
        if text[eq + 1] == '"':
            j, chars = eq + 2, []
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                chars.append(text[j])
                j += 1
            out.append((key, "".join(chars)))
            i = j + 2
        else:
            end = text.find(",", eq)
            end = len(text) if end < 0 else end
            out.append((key, int(text[eq + 1 : end].rstrip("i"))))
            i = end + 1
    return out


def test_a_bulk_record_is_one_point_and_one_document_that_the_api_lists_and_replays() -> None:
    """1,000 refused readings (~85 KiB) are one point whose payload is stored whole in 32 KiB
    fields; the API joins them, says the count and reasons, keeps the details bounded, and a
    replay is one ReadingBatch of exactly those readings with the batch's epoch."""
    records = [
        Rejected("invalid_reading", f"values.x: bad number {'z' * 300}", reading(i), i, "ab" * 8)
        for i in range(1000)
    ]
    [bulk] = bulk_of(records)
    assert len(bulk.raw) > 2 * STORED_CHUNK
    [line] = deadletter_lines([(GW, TOPIC, bulk)], 1_777_636_800_000_000_000)
    item = item_of(_row(line))
    assert (item.count, item.index, item.reasons) == (1000, None, {"invalid_reading": 1000})
    assert item.indexes == list(range(1000))
    assert item.faults is not None
    assert len(item.faults) == MAX_FAULT_DETAILS
    assert len(item.faults[0].detail) <= 200
    assert not item.payload_truncated
    assert base64.b64decode(item.payload_b64 or "") == bulk.raw
    replayed = orjson.loads(replay_payload(item))
    assert replayed["gateway_id"] == GW
    assert replayed["epoch"] == "ab" * 8
    assert replayed["readings"] == [orjson.loads(reading(i)) for i in range(1000)]
    doc = orjson.loads(deadletter_record(GW, TOPIC, bulk, datetime.now(UTC)))
    assert (doc["count"], doc["indexes"][:3], doc["index"]) == (1000, [0, 1, 2], None)
    assert len(doc["faults"]) == MAX_FAULT_DETAILS


def test_a_record_of_one_reading_written_before_still_lists_and_replays() -> None:
    """Deployed databases hold records of one reading each (``index`` set): still read."""
    raw = reading(7)
    row = {
        "time": 1_777_636_800_000_000_000,
        "reason": "charger_not_bound",
        "gateway_id": GW,
        "detail": "cp-7 is gw-2's",
        "topic": TOPIC,
        "index": 7,
        "payload_bytes": len(raw),
        "payload_b64": base64.b64encode(raw).decode(),
    }
    item = item_of(row)
    assert (item.index, item.count, item.indexes) == (7, None, None)
    assert orjson.loads(replay_payload(item))["readings"] == [orjson.loads(raw)]
