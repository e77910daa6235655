"""Whole-stack fault scenarios: every reading an edge outbox accepted is in InfluxDB exactly once
(or still held by the outbox), the latest value equals the newest stored reading, and what was
lost is what the gap report says. Counts are printed per scenario (``pytest -s`` shows them;
they are also in the assertion messages)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.delivery_checks import (
    assert_latest_is_newest_stored,
    assert_nothing_lost,
    settle,
)
from tests.support.fault_proxy import FaultProxy
from tests.support.system_stack import FAST_GAPS_ENV, SystemStack, gateway_services, stop_process

pytestmark = pytest.mark.system

GATEWAYS = ["gw-1", "gw-2"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SystemStack]:
    with SystemStack(tmp_path / "stack", FAST_GAPS_ENV).running(len(GATEWAYS), 5, 0.05) as s:
        yield s


def test_bridge_sigkilled_mid_stream_loses_nothing(stack: SystemStack) -> None:
    """SIGKILL of the bridge while readings flow: unacknowledged messages are redelivered to the
    restarted bridge; every accepted reading is stored exactly once."""
    time.sleep(2)
    for _ in range(2):
        stack.kill("bridge")
        time.sleep(1)
        stack.restart("bridge")
        time.sleep(1.5)
    accounts = settle(stack, GATEWAYS, gateway_services(len(GATEWAYS)))
    assert_nothing_lost(accounts)
    assert_latest_is_newest_stored(stack)


def test_influxdb_stopped_for_a_while_loses_nothing(stack: SystemStack) -> None:
    """InfluxDB down for 6 s: the bridge retries without acknowledging; the broker keeps the
    rest; after InfluxDB is back every reading is stored once."""
    time.sleep(2)
    stack.stop("influxd")
    time.sleep(6)
    stack.restart("influxd")
    time.sleep(2)
    accounts = settle(stack, GATEWAYS, gateway_services(len(GATEWAYS)))
    assert_nothing_lost(accounts)
    assert_latest_is_newest_stored(stack)


def test_edge_agent_sigkilled_repeatedly_loses_nothing(stack: SystemStack) -> None:
    """gw-1's agent is SIGKILLed 5 times at random moments and restarted: whatever its outbox
    accepted is stored (or still held), never lost; replays add no point."""
    rng = random.Random(6)
    for _ in range(5):
        time.sleep(rng.uniform(0.3, 1.5))
        stack.kill("gateway-1")
        stack.restart("gateway-1")
    time.sleep(1)
    accounts = settle(stack, GATEWAYS, gateway_services(len(GATEWAYS)))
    assert_nothing_lost(accounts)


def test_broker_restarted_gracefully_loses_nothing(stack: SystemStack) -> None:
    """Mosquitto stopped with SIGTERM (it saves its database) and started again: sessions and
    queued messages survive, gateways and the bridge reconnect, nothing is lost."""
    time.sleep(2)
    stack.stop("mosquitto")
    time.sleep(2)
    stack.restart("mosquitto")
    time.sleep(4)
    accounts = settle(stack, GATEWAYS, gateway_services(len(GATEWAYS)))
    assert_nothing_lost(accounts)
    assert_latest_is_newest_stored(stack)


def test_broker_sigkill_loss_is_exactly_what_the_gap_report_says(stack: SystemStack) -> None:
    """SIGKILL of Mosquitto can lose QoS 1 messages it acknowledged since its last autosave
    (mosquitto/README.md). Whatever is lost must be visible: the bridge's confirmed gaps for
    each gateway add up to the readings that are neither stored nor held."""
    time.sleep(2)
    stack.kill("mosquitto")
    time.sleep(1)
    stack.restart("mosquitto")
    time.sleep(4)
    accounts = settle(stack, GATEWAYS, gateway_services(len(GATEWAYS)))
    for a in accounts:
        assert a.duplicates == 0, a.line()
    lost = {a.gateway: len(a.lost) for a in accounts}
    deadline = time.monotonic() + 30
    while True:
        report = stack.bridge_status()["seq_gaps"]
        confirmed = {
            gw: sum(int(g["missing"] or 0) for g in report.get(gw, []) if g["state"] == "confirmed")
            for gw in GATEWAYS
        }
        if confirmed == lost or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(f"lost {lost}, reported missing {confirmed}")
    assert confirmed == lost


def test_gateway_link_blackholed_then_reset_loses_nothing(
    stack: SystemStack, tmp_path: Path
) -> None:
    """A gateway behind a link that goes silent for 12 s (a dead cellular link: no FIN, no RST),
    then is reset mid-stream twice: the agent keeps capturing into its outbox, reconnects, and
    every accepted reading arrives once."""
    gw = "gw-link"
    with FaultProxy("127.0.0.1", int(stack.state["mqtt"]["tls_port"])) as proxy:
        env = stack.agent_env(gw, proxy.port, sim={"chargers": 5, "interval_s": 0.05})
        agent = stack.start_agent(env, tmp_path / "gw-link.log", "--source", "sim")
        try:
            time.sleep(3)
            proxy.set(blackhole=True)
            time.sleep(12)
            proxy.set(blackhole=False)
            proxy.reset_all()
            time.sleep(3)
            proxy.reset_all()
            time.sleep(3)
        finally:
            stop_process(agent)
        assert proxy.state.connections >= 3, "the agent did not reconnect through the proxy"
    a = stack.wait_delivered([gw], timeout=90)[0]
    print(a.line())
    assert_nothing_lost([a])
