"""The fleet page (``GET /`` of telemetry-api) in headless Chromium against the real pipeline.

Readings of four chargers on two gateways go through Mosquitto and the real
``telemetry-bridge`` into InfluxDB; Debian's ``chromium`` opens the page served by the real
``telemetry-api`` and the test reads the DOM: the state counts, the table, the chart's points,
a live point added by the page's ``latest`` polling, and the key handling. A screenshot is
written to the test's tmp_path (its path is printed); with ``TELEMETRY_FLEET_SCREENSHOT=PATH``
it is also copied to PATH (how docs/img/fleet-page.png is made).

The browser is driven over the Chrome DevTools Protocol with the ``websockets`` package the
project already depends on: one browser start, waits on conditions (bounded), JavaScript errors
and CSP violations collected, screenshot after the data is in. Chromium missing or unable to
start skips the tests with the reason (scripts/bootstrap.sh installs it).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import struct
import time
import uuid
from base64 import b64decode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.sync.client import ClientConnection, connect

from bridge.settings import BridgeSettings
from edge_agent.heartbeat import online_payload
from edge_agent.records import OutboxStats
from query_api.settings import ApiSettings
from telemetry_common.schema import Reading, encode_batch, format_ts
from telemetry_common.settings import env_for
from telemetry_stack.servers import ProcessNotReady
from tests.conftest import run_broker
from tests.support.fixtures import BrokerInfo, InfluxTarget, MqttClientFactory, TestPki
from tests.support.gateway_publisher import GatewayPublisher
from tests.support.influx import influxql
from tests.support.processes import Procs, start_api, start_bridge
from tests.support.sessions_data import create_keep, session, session_line, write_keep
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ = secrets.token_urlsafe(18)
CHROMIUM = os.environ.get("TELEMETRY_TEST_CHROMIUM", "/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 800
CDP_TIMEOUT_S = 15.0
CHARGERS_MAX_PAGE = 3
HISTORY_MAX_POINTS = 40
PAGE_TIMEOUT_S = 30.0

#: The page's state as the test reads it (one Runtime.evaluate, returned by value).
SNAPSHOT_JS = """(() => {
  const text = (id) => {
    const el = document.getElementById(id);
    return el ? el.textContent : null;
  };
  const chart = document.getElementById("chart");
  if (!chart || !document.body.dataset.page) return null;  // not the fleet page (yet)
  return {
    page: document.body.dataset.page,
    href: location.href,
    keyStored: sessionStorage.getItem("charger-telemetry.read-key") !== null,
    status: text("status"),
    authMessage: text("auth-message"),
    authVisible: !document.getElementById("auth").hidden,
    counts: {online: text("count-online"), stale: text("count-stale"),
             offline: text("count-offline"), total: text("count-total")},
    rows: Array.from(document.querySelectorAll("#charger-rows tr"),
                     (tr) => Array.from(tr.cells, (td) => td.textContent)),
    points: Number(chart.dataset.points),
    chartCharger: chart.dataset.charger,
    chartField: chart.dataset.field,
    canvases: chart.querySelectorAll("canvas").length,
    fields: Array.from(document.getElementById("field-select").options, (o) => o.value),
    caption: text("chart-caption"),
    alarms: Array.from(document.querySelectorAll("#alarm-rows tr"),
                       (tr) => [tr.dataset.kind, tr.dataset.subject, tr.cells[2].textContent]),
    alarmsCaption: text("alarms-caption"),
    detail: document.body.dataset.detail || null,
    identity: ["vendor", "model", "serial", "firmware"].map((k) => text("ident-" + k)),
    connectors: Array.from(document.querySelectorAll("#connector-rows tr"),
                           (tr) => Array.from(tr.cells, (td) => td.textContent)),
    sessions: Array.from(document.querySelectorAll("#session-rows tr"),
                         (tr) => Array.from(tr.cells, (td) => td.textContent)),
    gateways: Array.from(document.querySelectorAll("#gateway-rows tr"),
                         (tr) => Array.from(tr.cells, (td) => td.textContent)),
    certClasses: Array.from(document.querySelectorAll("#gateway-rows td.cert"),
                            (td) => td.className),
    gatewaysCaption: text("gateways-caption"),
  };
})()"""

PICK_FIELD = """{ const s = document.getElementById("field-select"); s.value = "%s";
  s.dispatchEvent(new Event("change")); }"""


class CdpError(RuntimeError):
    pass


@dataclass
class Browser:
    """A page in headless Chromium, driven over the DevTools Protocol (flattened session)."""

    ws: ClientConnection
    session: str = ""
    errors: list[str] = field(default_factory=list)
    _next_id: int = 0

    def call(self, method: str, *, session: bool = True, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(orjson.dumps(msg).decode())
        deadline = time.monotonic() + CDP_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {method} within {CDP_TIMEOUT_S:.0f}s")
            answer = orjson.loads(self.ws.recv(timeout=remaining))
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CdpError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self._note(answer)

    def _note(self, event: dict[str, Any]) -> None:
        """Keep errors the page reports: exceptions, console.error, CSP and network errors."""
        method, params = event.get("method"), event.get("params", {})
        if len(self.errors) >= 200:
            return
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {exc}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.append(f"console.error: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"{entry.get('source')}: {entry.get('text')}")

    def open(self, url: str) -> None:
        """Load ``url`` as a new document (through about:blank: a URL that differs from the
        current one only in its fragment would otherwise not reload the page)."""
        self.call("Page.navigate", url="about:blank")
        self.errors.clear()
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CdpError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def snapshot(self) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.evaluate(SNAPSHOT_JS)
        return value

    def wait_for(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = PAGE_TIMEOUT_S
    ) -> dict[str, Any]:
        """The page's snapshot once ``check`` holds; fails with the last one after ``timeout``."""
        deadline = time.monotonic() + timeout
        snap: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            try:
                snap = self.snapshot()
            except CdpError:  # between two documents while navigating
                snap = None
            if snap is not None and check(snap):
                return snap
            time.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; page: {snap}; "
            f"errors: {self.errors}"
        )

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(b64decode(data))


@pytest.fixture
def browser(procs: Procs, tmp_path: Path) -> Iterator[Browser]:
    """Headless Chromium (a fresh profile) with one page; stopped by PID, with its process
    group (renderers, zygote), at the end."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"Chromium not found at {CHROMIUM}: install the Debian package 'chromium' "
            "(scripts/bootstrap.sh does) or set TELEMETRY_TEST_CHROMIUM"
        )
    profile = tmp_path / "chromium-profile"
    argv = [
        CHROMIUM,
        "--headless",
        "--remote-debugging-port=0",  # the browser picks a free loopback port ...
        f"--user-data-dir={profile}",  # ... and writes it to DevToolsActivePort here
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--mute-audio",
        "--force-device-scale-factor=1",
        f"--window-size={WIDTH},{HEIGHT}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        argv.insert(2, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    proc = procs.start("chromium", argv, {"TZ": "UTC", "LANG": "C.UTF-8"})
    port_file = profile / "DevToolsActivePort"  # "PORT\n/devtools/browser/ID"

    def listening() -> bool:
        return port_file.exists() and "/devtools/" in port_file.read_text()

    try:
        try:
            proc.wait_ready(listening, timeout=20)
        except ProcessNotReady as exc:
            pytest.skip(f"Chromium ({CHROMIUM}) did not start: {exc}")
        port, path = port_file.read_text().split("\n")[:2]
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 2**20, open_timeout=10) as ws:
            b = Browser(ws)
            target = b.call("Target.createTarget", session=False, url="about:blank")
            attached = b.call(
                "Target.attachToTarget", session=False, targetId=target["targetId"], flatten=True
            )
            b.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                b.call(f"{domain}.enable")
            b.call(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=HEIGHT,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield b
    finally:
        pid = proc.pid
        proc.stop(timeout=10)
        if pid is not None:  # helpers left in the browser's own session (its pgid is its pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


# --- data through the real pipeline ---------------------------------------------------------


@dataclass
class Fleet:
    api: str
    publishers: dict[str, GatewayPublisher]
    seqs: dict[str, int]
    chargers: dict[str, tuple[str, str]]  # charger -> (gateway, expected state)
    points: dict[str, int]  # charger -> readings in the last 15 minutes
    session_start: datetime = datetime(1970, 1, 1, tzinfo=UTC)  # the selected charger's TX

    def publish(self, gateway: str, readings: list[dict[str, Any]]) -> None:
        batch = []
        for r in readings:
            self.seqs[gateway] += 1
            batch.append(
                Reading.model_validate_json(orjson.dumps({**r, "seq": self.seqs[gateway]}))
            )
        self.publishers[gateway].publish(encode_batch(gateway, batch))


def _values(i: int) -> dict[str, float]:
    """A charging session: power ramps up, wobbles, then tapers; the rest follows from it."""
    power = 11_000 * (1 - math.exp(-i / 6)) * (1 - 0.35 * max(0, i - 40) / 20)
    power += 350 * math.sin(i / 3)
    return {
        "power_w": round(power, 1),
        "energy_wh": round(12_000 + 11_000 * i * 5 / 3600, 1),
        "voltage_v": round(230 + 2 * math.sin(i / 5), 1),
        "current_a": round(power / 230, 2),
        "soc_pct": round(35 + i * 0.5, 1),
        "temperature_c": round(28 + i * 0.12, 1),
    }


def _series(
    charger: str, last: datetime, n: int, step_s: float, **extra: Any
) -> list[dict[str, Any]]:
    return [
        {
            "charger_id": charger,
            "ts": format_ts(last - timedelta(seconds=step_s * (n - 1 - i))),
            "status": "Charging",
            "values": _values(i),
            **extra,
        }
        for i in range(n)
    ]


#: The selected charger's connector and transaction (its readings carry them), and its identity
#: (on its first reading, as a boot): the bridge stores them; the sessions job's points are
#: written here as it would write them.
CONNECTOR = {"evse_id": 1, "connector_id": 1}
TX = "tx-live"
IDENTITY = {"vendor": "ACME", "model": "Wallbox 22", "serial": "SN-0001", "firmware": "1.4.2"}


def _stored(db: InfluxTarget, total: int) -> bool:
    rows = influxql(db.url, db.database, "SELECT count(seq) FROM readings")
    return bool(rows) and int(rows[0][1]) >= total


@pytest.fixture
def broker(pki: TestPki, tmp_path: Path) -> Iterator[BrokerInfo]:
    """A Mosquitto of this test's own (it overrides the session broker, for ``mqtt_client``
    too): the page lists every charger whose retained live value the API sees, and the session
    broker holds those of every other test."""
    yield from run_broker(pki, tmp_path / "mosquitto")


@pytest.fixture
def fleet(
    broker: BrokerInfo, influx_db: InfluxTarget, mqtt_client: MqttClientFactory, procs: Procs
) -> Fleet:
    """Bridge + API (access log on, small page caps, alarms evaluated every second) on the test
    database; four chargers on two gateways, stored: two online with 60 readings in the last 5
    minutes, one stale, one offline; both gateways announce themselves online, the first with a
    backlog, drops and a certificate that expires in 3 days."""
    start_bridge(procs, broker, influx_db, extra_env=env_for(BridgeSettings, live_interval_s=0.2))
    api = start_api(
        procs,
        influx_db,
        READ,
        broker=broker,
        extra_env=env_for(
            ApiSettings,
            access_log=True,
            live_settle_s=0.5,
            # Caps below the page's page sizes: it must adapt and follow the cursors.
            chargers_max_page=CHARGERS_MAX_PAGE,
            history_max_points=HISTORY_MAX_POINTS,
            alarm_interval_s=1.0,
            alarm_settle_s=1.0,
        ),
    )
    tag = uuid.uuid4().hex[:4]
    gw1, gw2 = f"gw-{tag}-north", f"gw-{tag}-south"
    publishers = {
        gw: GatewayPublisher(mqtt_client(gw), broker.topics.readings(gw)) for gw in (gw1, gw2)
    }
    f = Fleet(api, publishers, {gw1: 0, gw2: 0}, {}, {})
    now = datetime.now(UTC).replace(microsecond=0)
    # Both gateways online: their retained heartbeat, made by the agent's own code (hourly, so
    # it stays fresh through the test); gw1 has a backlog of 25 (the oldest unsent 5 minutes
    # old), 5 drops, and a certificate that expires in 3 days.
    for gw, cert_days, depth, dropped in (
        (gw1, 3, 25, {"budget_non_energy": 4, "budget_energy": 1}),
        (gw2, 300, 0, {}),
    ):
        stats = OutboxStats(
            pending=depth, pending_bytes=0, parked=0, oldest_seq=None, newest_seq=None,
            oldest_age_s=300.0 if depth else None, last_seq_assigned=depth, dropped=dropped,
        )  # fmt: skip
        state = online_payload(
            now=now, version="1.0.0", outbox=stats, unconfirmed=0, interval_s=3600.0,
            not_after=now + timedelta(days=cert_days),
        )  # fmt: skip
        info = publishers[gw].client.publish(broker.topics.state(gw), state, qos=1, retain=True)
        info.wait_for_publish(10)
    plan = [
        (gw1, f"{gw1}-cp01", "online", now - timedelta(seconds=2), 60, 5.0),
        (gw1, f"{gw1}-cp02", "stale", now - timedelta(minutes=10), 20, 5.0),
        (gw2, f"{gw2}-cp03", "online", now - timedelta(seconds=3), 60, 5.0),
        (gw2, f"{gw2}-cp04", "offline", now - timedelta(hours=2), 10, 60.0),
    ]
    selected = min(c for _, c, st, *_ in plan if st == "online")
    for gateway, charger, expected, last, n, step in plan:
        if charger == selected:
            series = _series(charger, last, n, step, transaction_id=TX, **CONNECTOR)
            series[0]["charger_info"] = IDENTITY
            f.publish(gateway, series)
            f.session_start = datetime.fromisoformat(series[0]["ts"])
        else:
            f.publish(gateway, _series(charger, last, n, step))
        f.chargers[charger] = (gateway, expected)
        window = now - timedelta(minutes=15)
        f.points[charger] = sum(
            1 for i in range(n) if last - timedelta(seconds=step * (n - 1 - i)) >= window
        )
    total = sum(n for *_, n, _ in plan)
    wait_until(f"{total} readings in InfluxDB", lambda: _stored(influx_db, total))
    create_keep(influx_db.url, influx_db.database)
    write_keep(
        influx_db.url,
        influx_db.database,
        [
            session_line(
                session(selected, TX, f.session_start, meter_start_wh=_values(0)["energy_wh"],
                        energy_wh=0.0, gateway_id=gw1, evse_id=1, connector_id=1)
            ),
            session_line(
                session(selected, "tx-prev", now - timedelta(days=2),
                        ended_at=now - timedelta(days=2, minutes=-95), energy_wh=15_000.0,
                        max_power_w=11_040.0, stop_reason="EVDisconnected", flags="seq_gap",
                        gateway_id=gw1, evse_id=1, connector_id=1)
            ),
        ],
    )  # fmt: skip
    return f


# --- tests ----------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_page_shows_the_fleet_and_a_live_chart(
    browser: Browser, fleet: Fleet, procs: Procs, tmp_path: Path
) -> None:
    """Opened with #key=..., the page shows the published chargers with their gateway and state,
    the counts by state, and a chart of the first online charger's power_w with one point per
    stored reading of the last 15 minutes; another field can be picked; a reading published
    while the page is open is added by the latest polling. The API's page caps (3 chargers, 40
    points) are below the page's page sizes: it lowers them and follows the cursors. The key
    leaves the address bar and never reaches the server in a URL (access log). The gateways
    table shows each gateway's heartbeat: state, version, backlog, oldest unsent, drops,
    certificate expiry (warning colour within 14 days), chargers. No JavaScript error or CSP
    violation."""
    browser.open(f"{fleet.api}/#key={READ}")
    snap = browser.wait_for(
        "the fleet and the chart",
        lambda s: s["page"] == "ready" and len(s["rows"]) == 4 and s["points"] > 0,
    )
    assert snap["counts"] == {"online": "2", "stale": "1", "offline": "1", "total": "4"}
    table = {row[0]: (row[1], row[2]) for row in snap["rows"]}
    assert table == fleet.chargers
    assert [row[0] for row in snap["rows"]] == sorted(fleet.chargers)
    selected = min(c for c, (_, st) in fleet.chargers.items() if st == "online")
    assert snap["chartCharger"] == selected
    assert snap["chartField"] == "power_w"
    assert snap["points"] == fleet.points[selected] == 60
    assert snap["canvases"] >= 1
    assert set(snap["fields"]) == set(_values(0))
    assert "#" not in snap["href"]
    assert READ not in snap["href"]
    assert snap["keyStored"]

    # The selected charger: its identity from its boot reading, its connector charging in the
    # active session with the energy so far, and its sessions of the last 7 days.
    def energy_so_far(i: int) -> str:
        return f"{(_values(i)['energy_wh'] - _values(0)['energy_wh']) / 1000:.2f} kWh"

    snap = browser.wait_for(
        "the selected charger's connectors and sessions",
        lambda s: s["detail"] == selected and len(s["connectors"]) == 1 and len(s["sessions"]) == 2,
    )
    assert snap["identity"] == list(IDENTITY.values())
    (row,) = snap["connectors"]
    assert row[:2] == ["1/1", "Charging"]
    assert row[3] == f"{_values(59)['power_w'] / 1000:.1f} kW"
    assert (row[4], row[5]) == (TX, energy_so_far(59))
    assert row[6].endswith("min")  # the session began 5 minutes ago
    active, ended = snap["sessions"]
    assert (active[1], active[2], active[7]) == ("active", "1/1", "")
    ago = datetime.fromisoformat(ended[0].replace(" ", "T") + "+00:00")
    assert abs(ago - (datetime.now(UTC) - timedelta(days=2))) < timedelta(minutes=5)
    assert ended[1:] == [
        format_ts(ago + timedelta(minutes=95)).replace("T", " ")[:19],
        "1/1", "15.00 kWh", "1 h 35 min", "11.0 kW", "EVDisconnected", "seq_gap",
    ]  # fmt: skip

    # The gateways: state, agent version, backlog, oldest unsent, drops, certificate expiry
    # (gw1's in 3 days: the warning colour), chargers.
    gw1, gw2 = sorted(fleet.publishers)
    snap = browser.wait_for("the gateways", lambda s: len(s["gateways"]) == 2)
    assert snap["gateways"] == [
        [gw1, "online", "1.0.0", "25", "5 min", "5", "in 3 d", "2"],
        [gw2, "online", "1.0.0", "0", "\u2013", "0", "in 300 d", "2"],
    ]
    assert snap["certClasses"] == ["num cert warning", "num cert ok"]
    assert snap["gatewaysCaption"] == "Gateways (2)"

    # Another field: the chart is rebuilt from history for it.
    browser.evaluate(PICK_FIELD % "soc_pct")
    snap = browser.wait_for("the soc_pct chart", lambda s: s["chartField"] == "soc_pct")
    assert snap["points"] == 60
    browser.evaluate(PICK_FIELD % "power_w")
    browser.wait_for("the power_w chart again", lambda s: s["chartField"] == "power_w")

    # A live reading: the page's latest polling (every 5 s) adds it to the chart.
    gateway = fleet.chargers[selected][0]
    fleet.publish(
        gateway,
        [
            {
                "charger_id": selected,
                "ts": format_ts(datetime.now(UTC)),
                "status": "Charging",
                "values": _values(60),
                "transaction_id": TX,
                **CONNECTOR,
            }
        ],
    )
    snap = browser.wait_for("the live point", lambda s: s["points"] == 61)
    assert "61 points" in snap["caption"]
    # ... and the same poll refreshes the connector: the session's energy so far grew.
    browser.wait_for(
        "the connector's energy so far", lambda s: s["connectors"][0][5] == energy_so_far(60)
    )

    # The active alarms: the soon expiring certificate, and the two chargers silent for longer
    # than STATE_STALE_AFTER_S (their interval is not learned: one value each in the mirror).
    quiet = sorted(c for c, (_, st) in fleet.chargers.items() if st in ("stale", "offline"))
    expected = [["certificate_expiry", gw1, "warning"]] + [
        ["charger_silent", c, "warning"] for c in quiet
    ]
    snap = browser.wait_for(
        "the active alarms", lambda s: sorted(s["alarms"]) == sorted(expected), timeout=45
    )
    assert snap["alarmsCaption"] == "Active alarms (3)"

    shot = tmp_path / "fleet-page.png"
    browser.screenshot(shot)
    print(f"\nfleet page screenshot: {shot}")
    assert _png_size(shot) == (WIDTH, HEIGHT)
    target = os.environ.get("TELEMETRY_FLEET_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
        print(f"copied to {target}")
    # The browser logs each refused request; only the two limit-too-large answers may appear.
    refused = [e for e in browser.errors if e.startswith("network:") and "status of 422" in e]
    assert [e for e in browser.errors if e not in refused] == []
    assert 1 <= len(refused) <= 4

    api_log = next(p for p in procs.started if p.name == "api").log_file.read_text()
    assert f"/v1/chargers?limit={CHARGERS_MAX_PAGE}&cursor=" in api_log  # capped, paged
    assert f"&limit={HISTORY_MAX_POINTS}&cursor=" in api_log
    assert READ not in api_log


def test_the_page_asks_for_a_read_key_and_explains_a_refusal(
    browser: Browser, influx_db: InfluxTarget, procs: Procs
) -> None:
    """Without a key the page shows the key form and no fleet; a wrong key in the fragment gets
    a clear 401 message and is forgotten; the right key typed into the form loads the (empty)
    fleet. The page itself needs no key."""
    api = start_api(procs, influx_db, READ)
    browser.open(f"{api}/")
    snap = browser.wait_for("the key form", lambda s: s["page"] == "auth")
    assert snap["authVisible"]
    assert "role read" in snap["authMessage"]
    assert snap["rows"] == []

    browser.open(f"{api}/#key=not-a-valid-key")
    snap = browser.wait_for(
        "the 401 message", lambda s: s["page"] == "auth" and "401" in (s["authMessage"] or "")
    )
    assert "read" in snap["authMessage"]
    assert not snap["keyStored"]
    assert "not-a-valid-key" not in snap["href"]

    browser.evaluate(
        f'document.getElementById("key-input").value = {orjson.dumps(READ).decode()};'
        'document.getElementById("key-form").requestSubmit();'
    )
    snap = browser.wait_for("the empty fleet", lambda s: s["page"] == "ready")
    assert not snap["authVisible"]
    assert snap["counts"] == {"online": "0", "stale": "0", "offline": "0", "total": "0"}
    assert snap["keyStored"]
    # Only the refused requests may have logged errors (the browser reports a 401 as one).
    assert [e for e in browser.errors if "401" not in e] == []
