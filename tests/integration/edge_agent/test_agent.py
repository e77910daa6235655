"""The edge agent as a process against a real Mosquitto (issue 3): a broker outage, repeated
SIGKILLs, the outbox budget, not-authorized PUBACKs, commands over MQTT 5 and its metrics.

The agent is the real ``edge-agent`` console script. What reaches the broker is read by a
persistent-session subscriber with the bridge's identity; the outbox by ``edge-agent outbox``.
Tests that stop the broker start one of their own (``own_broker``) on fixed ports.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.outbox import Outbox
from edge_agent.settings import EdgeSettings
from provisioning.pki import OPERATOR_IDENTITY
from telemetry_common.schema import format_ts
from telemetry_common.settings import env_for
from telemetry_common.tls import client_context
from telemetry_stack.servers import free_port
from tests.support.edge_agent_io import open_fifo_writer, outbox_cli, peek_pending
from tests.support.fixtures import BrokerInfo, MqttClientFactory, TestPki
from tests.support.own_broker import OwnBroker
from tests.support.processes import BIN, Procs, client_settings, logged, stopped
from tests.support.prometheus import scrape
from tests.support.reading_collector import Collector
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
def own_broker(pki: TestPki, tmp_path: Path) -> Iterator[OwnBroker]:
    b = OwnBroker(pki, tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


def line(gateway: str, i: int, base: datetime, *, energy: bool = True) -> dict[str, Any]:
    values: dict[str, float] = {"power_w": 100.0 + i % 97, "voltage_v": 230.0 + i % 3}
    if energy:
        values["energy_wh"] = 10_000.0 + i
    return {
        "charger_id": f"{gateway}-cp{i % 7:03d}",
        "evse_id": 1,
        "connector_id": 1,
        "ts": format_ts(base + timedelta(milliseconds=i)),
        "status": "Charging",
        "values": values,
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def edge_env(
    broker: BrokerInfo, gateway: str, outbox_path: Path, **extra: object
) -> dict[str, str]:
    """The environment of an edge agent for ``gateway`` on ``broker``; ``extra`` are more
    EdgeSettings (``sim={"chargers": 5}``)."""
    base = {
        "gateway_id": gateway,
        "outbox_path": outbox_path,
        "reconnect_max_s": 2,
        "publish_timeout_s": 10,
    }
    return env_for(EdgeSettings, **(client_settings(broker, gateway) | base | extra))


def metrics(port: int) -> dict[str, float]:
    return scrape(f"http://127.0.0.1:{port}/metrics")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- tests ----------------------------------------------------------------------------------


def test_broker_outage_every_reading_arrives_exactly_as_produced(
    own_broker: OwnBroker, procs: Procs, tmp_path: Path
) -> None:
    """The broker is stopped while the agent captures 5,000 readings, then started again: all
    7,000 readings arrive with seq 1..7000 and exactly the produced values, the outbox ends
    empty, and the metrics showed the backlog while the broker was down."""
    gateway = unique("gw-out")
    broker = own_broker.info
    collector = Collector(broker, broker.topics.readings(gateway))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    produced = [line(gateway, i, base) for i in range(7000)]
    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    outbox = tmp_path / "outbox.sqlite3"
    port = free_port()
    env = edge_env(broker, gateway, outbox, metrics_port=port)
    edge = procs.start(
        "edge", [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file", str(fifo)], env
    )
    fd = open_fifo_writer(fifo)
    try:
        os.write(fd, jsonl(produced[:1000]))
        wait_until("the first 1000 readings", lambda: len(collector.seqs()) == 1000)
        own_broker.stop()
        for start in range(1000, 6000, 500):
            os.write(fd, jsonl(produced[start : start + 500]))
            time.sleep(0.05)
        wait_until(
            "6000 captures",
            lambda: metrics(port)["telemetry_edge_captured_total"] == 6000,
        )
        seen = metrics(port)
        assert seen["telemetry_edge_outbox_depth"] >= 5000
        assert seen["telemetry_edge_mqtt_connected"] == 0
        assert seen["telemetry_edge_outbox_oldest_age_seconds"] > 0
        own_broker.start()
        os.write(fd, jsonl(produced[6000:]))
    finally:
        os.close(fd)
    wait_until("every reading", lambda: len(collector.seqs()) == 7000, timeout=60)
    wait_until("the agent to exit", lambda: not edge.is_running())
    assert edge.returncode() == 0, edge.log_tail()
    collector.close()
    assert collector.seqs() == set(range(1, 7001))
    for seq, reading in collector.readings.items():
        assert reading == {"seq": seq, **produced[seq - 1]}
    st = outbox_cli("stats", "--path", str(outbox))
    assert (st["pending"], st["parked"], st["dropped"]) == (0, 0, {})


def test_sigkill_at_random_points_loses_no_accepted_reading(
    broker: BrokerInfo, procs: Procs, tmp_path: Path
) -> None:
    """The agent (simulator, ~2500 readings/s) is SIGKILLed 6 times at random moments while it
    publishes and restarted each time; then `outbox drain` sends the rest. Every seq the
    outbox ever assigned arrives, and each reading seen pending in the outbox (sampled while
    the agent ran and after each kill) arrives unchanged."""
    gateway = unique("gw-kill")
    collector = Collector(broker, broker.topics.readings(gateway))
    outbox = tmp_path / "outbox.sqlite3"
    env = edge_env(broker, gateway, outbox, sim={"chargers": 50, "interval_s": 0.02, "seed": 3})
    rng = random.Random(7)
    pending_at_kill: dict[int, bytes] = {}
    argv = [str(BIN / "edge-agent"), "run", "--source", "sim"]
    for round_ in range(6):
        edge = procs.start(f"edge-{round_}", argv, env)
        edge.wait_ready(logged(edge, "MQTT connected"), 20)
        deadline = time.monotonic() + rng.uniform(0.3, 2.0)
        while time.monotonic() < deadline:  # what is pending now was accepted: keep it
            pending_at_kill.update(peek_pending(outbox))
            time.sleep(0.05)
        assert edge.pid is not None
        os.kill(edge.pid, signal.SIGKILL)
        wait_until("the agent to die", stopped(edge), timeout=10)
        pending_at_kill.update(peek_pending(outbox))
    result = outbox_cli("drain", "--timeout", "60", env=env)
    assert result["pending"] == 0
    with Outbox(outbox) as box:
        st = box.stats()
    assert st.pending == 0
    assert st.dropped == {}
    every = set(range(1, st.last_seq_assigned + 1))
    wait_until("every accepted reading", lambda: every <= collector.seqs(), timeout=60)
    collector.close()
    assert len(every) > 1000
    assert pending_at_kill
    for seq, body in pending_at_kill.items():
        assert collector.readings[seq] == orjson.loads(body)


def test_budget_keeps_energy_readings_and_counts_what_it_dropped(
    own_broker: OwnBroker, procs: Procs, tmp_path: Path
) -> None:
    """With the broker down and OUTBOX__MAX_ROWS=100, 400 readings (1 in 4 with energy_wh)
    are captured: exactly the documented set is kept (every energy reading, then the newest
    non-energy ones), the drop counters say how many went by which rule, and once the broker
    is back exactly that set arrives."""
    gateway = unique("gw-budget")
    broker = own_broker.info
    collector = Collector(broker, broker.topics.readings(gateway))
    own_broker.stop()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    produced = [line(gateway, i, base, energy=i % 4 == 0) for i in range(400)]
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(jsonl(produced))
    outbox = tmp_path / "outbox.sqlite3"
    env = edge_env(broker, gateway, outbox, outbox={"max_rows": 100})
    edge = procs.start(
        "edge", [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file", str(feed)], env
    )
    wait_until("400 captures", lambda: outbox.exists() and _last_seq(outbox) == 400)
    # Policy: 100 energy readings fill the budget exactly, so every non-energy reading goes.
    energy_seqs = {i + 1 for i in range(400) if i % 4 == 0}
    st = outbox_cli("stats", "--path", str(outbox))
    assert st["pending"] == 100
    assert st["dropped"] == {"budget_non_energy": 300}
    own_broker.start()
    wait_until("the agent to send and exit", lambda: not edge.is_running(), timeout=60)
    assert edge.returncode() == 0, edge.log_tail()
    wait_until("the kept readings", lambda: collector.seqs() == energy_seqs)
    time.sleep(0.5)  # nothing else arrives
    collector.close()
    assert collector.seqs() == energy_seqs
    for seq in energy_seqs:
        assert collector.readings[seq] == {"seq": seq, **produced[seq - 1]}


def _last_seq(outbox: Path) -> int:
    with contextlib.closing(Outbox(outbox)) as box:
        return box.last_seq()


def test_not_authorized_batches_are_parked_and_publishing_goes_on(
    broker: BrokerInfo, procs: Procs, tmp_path: Path
) -> None:
    """A misconfigured topic root makes the broker refuse every batch (PUBACK 0x87): each of
    its batches (at least 4) is parked and counted, the agent neither stops at the first nor
    retries, and finishes; run again with the right root, new readings go through while the
    parked ones stay parked for the operator."""
    gateway = unique("gw-acl")
    collector = Collector(broker, broker.topics.readings(gateway))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    first = tmp_path / "first.jsonl"
    first.write_bytes(jsonl([line(gateway, i, base) for i in range(350)]))
    outbox = tmp_path / "outbox.sqlite3"
    wrong = edge_env(broker, gateway, outbox, topic_root="fleet/wrong", batch_max_readings=100)
    run = [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file"]
    edge = procs.start("edge-wrong", [*run, str(first)], wrong)
    wait_until("the misconfigured agent to finish", lambda: not edge.is_running())
    assert edge.returncode() == 0, edge.log_tail()
    assert edge.log_file.read_text().count("parked seq") >= 4
    st = outbox_cli("stats", "--path", str(outbox))
    assert (st["pending"], st["parked"], st["dropped"]) == (0, 350, {})
    parked = subprocess.run(
        [str(BIN / "edge-agent"), "outbox", "peek", "--parked", "-n", "1", "--json"],
        capture_output=True,
        check=True,
        timeout=60,
        env={**os.environ, **env_for(EdgeSettings, outbox_path=outbox)},
    )
    assert orjson.loads(parked.stdout)["reason"] == "Not authorized"

    second = tmp_path / "second.jsonl"
    second.write_bytes(jsonl([line(gateway, i, base) for i in range(350, 400)]))
    right = edge_env(broker, gateway, outbox, batch_max_readings=100)
    edge = procs.start("edge-right", [*run, str(second)], right)
    wait_until("the fixed agent to finish", lambda: not edge.is_running())
    assert edge.returncode() == 0, edge.log_tail()
    wait_until("the new readings", lambda: collector.seqs() == set(range(351, 401)))
    collector.close()
    st = outbox_cli("stats", "--path", str(outbox))
    assert (st["pending"], st["parked"]) == (0, 350)


def test_commands_round_trip_over_mqtt5_with_correlation_data(
    broker: BrokerInfo, procs: Procs, tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    """The operator identity sends ping, set-interval, outbox-stats, flush and an unknown
    command with a Response Topic under the gateway's reply/ and Correlation Data; each answer
    arrives there with the same correlation data. A command naming another gateway's reply
    topic is refused (not executed, not answered, counted)."""
    gateway = unique("gw-cmd")
    outbox = tmp_path / "outbox.sqlite3"
    port = free_port()
    # Someone must consume the readings: a batch no subscription matches is not delivered.
    consumer = mqtt_client("telemetry-bridge")
    consumer.subscribe(broker.topics.readings(gateway), qos=1)
    env = edge_env(broker, gateway, outbox, metrics_port=port, sim={"interval_s": 5})
    edge = procs.start("edge", [str(BIN / "edge-agent"), "run", "--source", "sim"], env)
    edge.wait_ready(logged(edge, "subscribed to"), 20)

    answers: dict[bytes, dict[str, Any]] = {}
    elsewhere: list[str] = []
    done = threading.Condition()
    cert, key = broker.pki.client(OPERATOR_IDENTITY)
    op = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("op"), protocol=mqtt.MQTTv5)
    op.tls_set_context(client_context(broker.ca_file, cert, key))

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", b"")
        with done:
            if msg.topic == reply_topic:
                answers[bytes(correlation)] = orjson.loads(msg.payload)
            else:
                elsewhere.append(msg.topic)
            done.notify_all()

    reply_topic = broker.topics.reply(gateway, "op-1")
    op.on_message = on_message
    op.connect(broker.host, broker.service_port)
    op.loop_start()
    try:
        op.subscribe(f"{broker.topic_root}/+/reply/#", qos=1)
        time.sleep(0.5)

        def ask(name: str, payload: dict[str, Any], corr: bytes, reply: str = reply_topic) -> None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply
            props.CorrelationData = corr
            info = op.publish(
                broker.topics.cmd(gateway, name), orjson.dumps(payload), qos=1, properties=props
            )
            info.wait_for_publish(10)

        ask("ping", {}, b"c-ping")
        ask("set-interval", {"interval_s": 0.05}, b"c-int")
        ask("reboot", {}, b"c-unknown")
        ask("ping", {}, b"c-bad", reply=broker.topics.reply(f"{gateway}x", "op-1"))
        with done:
            assert done.wait_for(lambda: len(answers) >= 3, timeout=15), answers
        # set-interval took effect: 2 chargers every 50 ms instead of every 5 s.
        wait_until(
            "faster capture",
            lambda: metrics(port)["telemetry_edge_captured_total"] > 40,
        )
        ask("outbox-stats", {}, b"c-stats")
        ask("flush", {"timeout_s": 5}, b"c-flush")
        with done:
            assert done.wait_for(lambda: len(answers) >= 5, timeout=15), answers
    finally:
        op.disconnect()
        op.loop_stop()
    assert answers[b"c-ping"]["ok"]
    assert answers[b"c-ping"]["gateway_id"] == gateway
    assert answers[b"c-int"] == {
        "ok": True,
        "command": "set-interval",
        "interval_s": 0.05,
        "previous_s": 5.0,
    }
    assert answers[b"c-unknown"]["error"] == "unknown_command"
    assert answers[b"c-stats"]["stats"]["last_seq_assigned"] > 40
    assert answers[b"c-flush"]["ok"]
    assert b"c-bad" not in answers
    assert elsewhere == []
    m = metrics(port)
    assert m["telemetry_edge_commands_refused_total"] == 1
    assert m["telemetry_edge_commands_total"] == 5
    assert m["telemetry_edge_published_total"] > 40
    assert m['telemetry_edge_outbox_dropped_total{reason="budget_energy"}'] == 0


def test_backlog_drains_oldest_first_at_its_rate_while_live_readings_flow(
    broker: BrokerInfo, procs: Procs, tmp_path: Path
) -> None:
    """A 30,000-reading backlog drains at DRAIN_RATE=6000/s, oldest first, while the simulator
    keeps capturing 100 readings/s: no live reading waits more than a couple of seconds (it
    would wait for the whole backlog without the alternation), and the backlog takes at least
    the time its rate allows."""
    gateway = unique("gw-drain")
    collector = Collector(broker, broker.topics.readings(gateway))
    outbox = tmp_path / "outbox.sqlite3"
    old = datetime.now(UTC) - timedelta(hours=1)
    body = line(gateway, 0, old)
    with Outbox(outbox) as box:
        for chunk in range(30):
            box.append(
                [
                    orjson.dumps({**body, "ts": format_ts(old + timedelta(milliseconds=i))})
                    for i in range(chunk * 1000, chunk * 1000 + 1000)
                ]
            )
    env = edge_env(
        broker,
        gateway,
        outbox,
        drain_rate=6000,
        sim={"chargers": 10, "interval_s": 0.1},
    )
    procs.start("edge", [str(BIN / "edge-agent"), "run", "--source", "sim"], env)
    backlog = set(range(1, 30_001))
    wait_until("the backlog", lambda: backlog <= collector.seqs(), timeout=60)
    collector.close()
    arrived = collector.arrived
    order = sorted(backlog, key=lambda q: (arrived[q], q))
    assert order == sorted(backlog)  # oldest first
    start, end = arrived[1], arrived[30_000]
    assert end - start >= 29_000 / 6000 * 0.8  # paced (first burst may go at once)
    live = {
        seq: arrived[seq] - datetime.fromisoformat(r["ts"]).timestamp()
        for seq, r in collector.readings.items()
        if seq > 30_000 and start <= arrived[seq] <= end
    }
    assert len(live) >= 200  # live readings did arrive during the drain
    assert max(live.values()) < 2.0, sorted(live.values())[-5:]


def test_readings_the_broker_acknowledged_stay_until_stored_and_go_again(
    broker: BrokerInfo, procs: Procs, tmp_path: Path
) -> None:
    """The subscriber receives every batch (the broker PUBACKs them) but acknowledges nothing as
    stored, as when the broker hands them to something that is not a bridge: the outbox keeps
    all of them and sends them again after STORED_TIMEOUT_S. Once acknowledgements come, the
    outbox empties and the agent exits 0. (With DELETE_AFTER=puback the outbox would have
    emptied at the PUBACKs, and these readings would be gone.)"""
    gateway = unique("gw-stored")
    collector = Collector(broker, broker.topics.readings(gateway), acknowledge=False)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    produced = [line(gateway, i, base) for i in range(300)]
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(jsonl(produced))
    outbox = tmp_path / "outbox.sqlite3"
    env = edge_env(broker, gateway, outbox, stored_timeout_s=1, batch_max_readings=100)
    edge = procs.start(
        "edge", [str(BIN / "edge-agent"), "run", "--source", "jsonl", "--file", str(feed)], env
    )
    wait_until("every reading received", lambda: collector.seqs() == set(range(1, 301)))
    wait_until("sent again", lambda: collector.messages >= 6, timeout=20)
    assert edge.is_running()
    assert len(peek_pending(outbox)) == 300
    collector._acknowledge = True
    wait_until("the agent to exit", lambda: not edge.is_running(), timeout=30)
    assert edge.returncode() == 0, edge.log_tail()
    collector.close()
    assert peek_pending(outbox) == {}
    assert "not confirmed stored" in edge.log_file.read_text()
