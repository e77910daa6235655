"""Durable dead letters listed and replayed (issue 18), on real servers: Mosquitto, InfluxDB 1.x,
the real ``telemetry-bridge`` with a provisioned bindings file and the ``telemetry-api``.

A charger missing from the bindings file sends a reading while nobody is subscribed to the
dead-letter topic: the API lists it with its raw reading; a replay while the cause persists is
refused again (``deadlettered:charger_not_bound``, no new dead letter); once the bridge runs
with a corrected file a replay stores it, once; a second replay (here through the CLI) stores
no second point. A replay is never acknowledged to the gateway as stored.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bridge.settings import BridgeSettings
from telemetry_common.schema import format_ts
from telemetry_common.settings import env_for
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory
from tests.support.gateway_publisher import GatewayPublisher
from tests.support.influx import influxql
from tests.support.processes import BIN, Procs, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ, ADMIN = (secrets.token_urlsafe(18) for _ in range(2))
WAIT_S = 30
EPOCH = "0123456789abcdef"


def _get(api: str, path: str, **params: Any) -> Any:
    resp = httpx.get(f"{api}{path}", params=params, headers={"X-API-Key": ADMIN}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _replay(api: str, ids: list[str] | None = None, **by: Any) -> dict[str, Any]:
    request = {"ids": ids} if ids is not None else by
    resp = httpx.post(
        f"{api}/v1/deadletters/replay", json=request, headers={"X-API-Key": ADMIN}, timeout=30
    )
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _outcome_after(api: str, dl_id: str, answer: dict[str, Any]) -> str | None:
    """The replay's outcome once the bridge wrote one: replayed_at changed from its value
    before the replay (the bridge's clock is compared with itself only)."""
    item = _get(api, f"/v1/deadletters/{dl_id}")
    at = item.get("replayed_at")
    before = answer["previous_replayed_at"][dl_id]
    return str(item["replay_outcome"]) if at is not None and at != before else None


def _points(db: InfluxTarget, charger: str) -> int:
    rows = influxql(db.url, db.database, f"SELECT seq FROM readings WHERE charger_id = '{charger}'")
    return len(rows)


def test_a_dead_letter_is_listed_replayed_once_the_cause_is_fixed_and_stored_once(
    broker: BrokerInfo,
    influx_db: InfluxTarget,
    mqtt_client: MqttClientFactory,
    procs: Procs,
    tmp_path: Path,
) -> None:
    """Listed with its raw reading (nobody subscribed to the dead-letter topic); replayed
    while the charger is still unbound: ``deadlettered:charger_not_bound`` and still one dead
    letter; after the bridge restarts with the charger bound: ``stored``, one point; replayed
    again through ``telemetry-stack deadletters replay``: still one point. The gateway is sent
    no stored acknowledgement for a replay."""
    tag = uuid.uuid4().hex[:8]
    gateway, good, lost = f"gw-dl-{tag}", f"cp-ok-{tag}", f"cp-lost-{tag}"
    bindings = tmp_path / "bindings.json"
    bindings.write_bytes(orjson.dumps({good: gateway}))
    bridge_env = env_for(
        BridgeSettings, bindings="provisioned", bindings_file=bindings, ack_interval_s=0.2
    )
    bridge = start_bridge(procs, broker, influx_db, extra_env=bridge_env)
    api = start_api(procs, influx_db, READ, broker=broker, keys={"admin": ADMIN})
    wait_until("the API's broker link", lambda: httpx.get(f"{api}/readyz").status_code == 200)

    # The gateway listens to its stored acknowledgements (its own topic) to count them.
    gw_client = mqtt_client(gateway)
    acks: list[dict[str, Any]] = []
    subscribed = threading.Event()
    gw_client.on_message = lambda _c, _u, msg: acks.append(orjson.loads(msg.payload))
    gw_client.on_subscribe = lambda *_a: subscribed.set()
    gw_client.subscribe(broker.topics.stored(gateway), qos=1)
    assert subscribed.wait(10), "no SUBACK"

    ts = datetime.now(UTC) - timedelta(minutes=5)
    readings = [
        {"charger_id": good, "seq": 1, "ts": format_ts(ts), "values": {"power_w": 1.0}},
        {"charger_id": lost, "seq": 2, "ts": format_ts(ts), "values": {"power_w": 2.5}},
    ]
    batch = {"gateway_id": gateway, "epoch": EPOCH, "readings": readings}
    GatewayPublisher(gw_client, broker.topics.readings(gateway)).publish(orjson.dumps(batch))

    def listed() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = _get(api, "/v1/deadletters", gateway_id=gateway)["items"]
        return items

    wait_until("the dead letter listed", lambda: len(listed()) == 1, WAIT_S)
    [item] = listed()
    assert item["reason"] == "charger_not_bound"
    assert (item["index"], item["count"], item["indexes"]) == (None, 1, [1])
    assert item["reasons"] == {"charger_not_bound": 1}
    assert item["topic"] == broker.topics.readings(gateway)
    assert orjson.loads(base64.b64decode(item["payload_b64"])) == [readings[1]]
    assert item["payload_truncated"] is False
    assert item["replay_outcome"] is None
    assert _get(api, f"/v1/deadletters/{item['id']}") == item
    assert _get(api, "/v1/deadletters", reason="ts_in_future", gateway_id=gateway)["items"] == []
    wait_until("the batch acknowledged", lambda: len(acks) >= 1, WAIT_S)
    assert acks[0].pop("ts", None) is not None  # the bridge's clock (docs/design.md)
    assert acks[0] == {"epoch": EPOCH, "seqs": [[1, 2]]}
    assert _points(influx_db, good) == 1

    # Replayed while the cause persists: refused again, and no second dead letter.
    first = _replay(api, [item["id"]])
    assert first["accepted"] == [item["id"]]
    assert first["refused"] == []
    wait_until(
        "the outcome of the first replay",
        lambda: _outcome_after(api, item["id"], first) is not None,
        WAIT_S,
    )
    assert _outcome_after(api, item["id"], first) == ("deadlettered:charger_not_bound")
    assert len(listed()) == 1
    assert _points(influx_db, lost) == 0
    first_outcome = _get(api, f"/v1/deadletters/{item['id']}")

    # The cause fixed: the bridge restarted with the charger bound to its gateway.
    bridge.stop(timeout=10)
    bindings.write_bytes(orjson.dumps({good: gateway, lost: gateway}))
    start_bridge(procs, broker, influx_db, name="bridge-2", extra_env=bridge_env)
    second = _replay(api, [item["id"]])
    assert second["accepted"] == [item["id"]]
    wait_until(
        "the outcome of the second replay",
        lambda: _outcome_after(api, item["id"], second) is not None,
        WAIT_S,
    )
    assert _outcome_after(api, item["id"], second) == "stored"
    assert _points(influx_db, lost) == 1
    [[_, epoch]] = influxql(
        influx_db.url, influx_db.database, f"SELECT epoch FROM readings WHERE charger_id = '{lost}'"
    )
    assert epoch == EPOCH  # the batch's epoch travelled with the dead letter
    stored = _get(api, f"/v1/deadletters/{item['id']}")
    assert stored["replay_outcome"] == "stored"
    assert stored["payload_b64"] == item["payload_b64"]  # the dead letter itself is kept
    assert second["previous_replayed_at"][item["id"]] == first_outcome["replayed_at"]

    # By filter, the stored one is skipped (so a filter sent again takes the next ones); with
    # exclude_stored false it is taken; GET can leave it out too.
    by_gateway = {"gateway_id": gateway}
    skipped = _replay(api, filter=by_gateway)
    assert (skipped["accepted"], skipped["refused"], skipped["more"]) == ([], [], False)
    assert _get(api, "/v1/deadletters", gateway_id=gateway, exclude_stored="true")["items"] == []
    taken = _replay(api, filter={**by_gateway, "exclude_stored": False}, limit=1)
    assert (taken["accepted"], taken["more"]) == ([item["id"]], False)
    wait_until(
        "the outcome of the replay by filter",
        lambda: _outcome_after(api, item["id"], taken) is not None,
        WAIT_S,
    )

    # Again, through the CLI against the real API: still one point.
    cli = subprocess.run(
        [str(BIN / "telemetry-stack"), "deadletters", "replay", "--id", item["id"],
         "--timeout", str(WAIT_S), "--api-url", api, "--api-key", ADMIN],
        capture_output=True, text=True, timeout=WAIT_S + 30, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, (cli.stdout, cli.stderr)
    assert "1 stored" in cli.stdout
    by_filter = subprocess.run(
        [str(BIN / "telemetry-stack"), "deadletters", "replay", "--gateway", gateway,
         "--timeout", str(WAIT_S), "--api-url", api, "--api-key", ADMIN],
        capture_output=True, text=True, timeout=WAIT_S + 30, check=False,
    )  # fmt: skip
    assert by_filter.returncode == 0, (by_filter.stdout, by_filter.stderr)
    assert "nothing replayed" in by_filter.stdout  # the stored one is skipped
    assert _points(influx_db, lost) == 1
    listing = subprocess.run(
        [str(BIN / "telemetry-stack"), "deadletters", "list", "--gateway", gateway, "--json"],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": "/usr/bin:/bin", "TELEMETRY_API_URL": api, "TELEMETRY_API_KEY": ADMIN},
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    [shown] = orjson.loads(listing.stdout)
    assert shown["id"] == item["id"]
    assert shown["replay_outcome"] == "stored"

    # No replay was acknowledged to the gateway: its seqs belong to the first conversation.
    time.sleep(1.0)  # five acknowledgement intervals for a wrong one to arrive
    assert [a["seqs"] for a in acks] == [[[1, 2]]]


def test_a_dead_letter_of_one_reading_written_before_bulk_records_is_listed_and_replayed(
    broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs
) -> None:
    """Deployed databases hold dead letters of one reading each (``index`` set, the reading's
    JSON alone): the API lists them as they are and a replay stores the reading."""
    tag = uuid.uuid4().hex[:8]
    gateway, charger = f"gw-old-{tag}", f"cp-old-{tag}"
    ts = datetime.now(UTC) - timedelta(minutes=5)
    raw = orjson.dumps({"charger_id": charger, "seq": 9, "ts": format_ts(ts), "values": {}})
    ns = time.time_ns()
    b64 = base64.b64encode(raw).decode()
    line = (
        f"deadletters,gateway_id={gateway},reason=charger_not_bound "
        f'detail="not bound",topic="chargers/v1/{gateway}/readings",index=4i,'
        f'epoch="{EPOCH}",payload_bytes={len(raw)}i,payload_b64="{b64}" {ns}'
    )
    httpx.post(
        f"{influx_db.url}/write", params={"db": influx_db.database}, content=line, timeout=10
    ).raise_for_status()
    start_bridge(procs, broker, influx_db)  # first-come bindings: the charger is free
    api = start_api(procs, influx_db, READ, broker=broker, keys={"admin": ADMIN})
    wait_until("the API's broker link", lambda: httpx.get(f"{api}/readyz").status_code == 200)
    [item] = _get(api, "/v1/deadletters", gateway_id=gateway)["items"]
    assert (item["index"], item["count"], item["indexes"], item["epoch"]) == (4, None, None, EPOCH)
    answer = _replay(api, [item["id"]])
    assert answer["accepted"] == [item["id"]]
    wait_until("the outcome", lambda: _outcome_after(api, item["id"], answer) is not None, WAIT_S)
    assert _outcome_after(api, item["id"], answer) == "stored"
    assert _points(influx_db, charger) == 1


def test_the_cli_says_what_to_do_when_it_cannot_reach_or_is_refused(
    influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """No stack.json, a read key (403), a wrong key (401) and an API that is down each end
    with exit 2 and a message that says what to do."""
    api = start_api(procs, influx_db, READ, keys={"admin": ADMIN})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "telemetry-stack"), "deadletters", "list", *args],
            capture_output=True, text=True, timeout=30, check=False,
            env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip

    none = run("--state-dir", str(tmp_path / "nothing"))
    assert none.returncode == 2
    assert "telemetry-stack up" in none.stderr
    assert "--api-url" in none.stderr
    read = run("--api-url", api, "--api-key", READ)
    assert read.returncode == 2
    assert "403" in read.stderr
    wrong = run("--api-url", api, "--api-key", "x" * 20)
    assert wrong.returncode == 2
    assert "401" in wrong.stderr
    ok = run("--api-url", api, "--api-key", ADMIN)
    assert ok.returncode == 0, ok.stderr
    assert "no dead letters" in ok.stdout
    down = run("--api-url", "http://127.0.0.1:9", "--api-key", ADMIN)
    assert down.returncode == 2
    assert "does not answer" in down.stderr
