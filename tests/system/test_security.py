"""Security checks against the whole stack started by ``telemetry-stack up`` (docs/design.md
guarantee 6): who may connect, what a gateway may do once connected, and what the REST API
refuses. Each check prints what it tried and what the stack did (``pytest -s``).

One stack serves the module. The checks before the revocation test do not disturb it; the
revocation test restarts the broker; the last two tests attack the bridge and may cost readings,
so they run last.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import pytest
from cryptography import x509

from bridge.settings import DEFAULT_CLIENT_ID, BridgeSettings
from provisioning import pki as pki_mod
from provisioning.bridge_session import FILE_NAME
from telemetry_common.schema import SCHEMA_ID, format_ts
from telemetry_common.topics import SHARE_GROUP, Topics
from tests.support.delivery_checks import Window
from tests.support.forged_certs import sign_with_ca
from tests.support.listening_sockets import conf_listeners, listening_sockets
from tests.support.mqtt_probe import (
    Outcome,
    local_openssl_cannot_speak,
    mqtt_connect,
    old_tls,
    tls_context,
)
from tests.support.mqtt_recorder import NOT_AUTHORIZED, Session, open_session
from tests.support.system_stack import BIN, FAST_GAPS_ENV, GAP_GRACE_S, SystemStack
from tests.support.waiting import poll

pytestmark = pytest.mark.system

WAIT_S = 10.0
#: A gateway the tests issue a certificate for; the stack does not run it.
ATTACKER = "gw-sec-a"
#: A gateway the stack runs: its readings flow during every check.
VICTIM = "gw-2"
GATEWAYS = ["gw-1", "gw-2"]


# --- the stack ------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``telemetry-stack ARGS`` (the operator's commands), never raising on failure."""
    return subprocess.run(
        [str(BIN / "telemetry-stack"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemStack]:
    """The whole stack, started from a state directory made before revocation existed: its PKI
    has no crl.pem (``up`` must create one, since the broker configuration names it)."""
    state = tmp_path_factory.mktemp("security") / "stack"
    made = cli("pki", "init", "--dir", str(state / "pki"))
    assert made.returncode == 0, made.stderr
    (state / "pki" / "crl.pem").unlink()
    with SystemStack(state, FAST_GAPS_ENV).running(len(GATEWAYS), 3, 0.2) as s:
        yield s


@pytest.fixture(scope="module")
def pki_dir(stack: SystemStack) -> Path:
    return Path(stack.state["pki_dir"])


@pytest.fixture(scope="module")
def topics(stack: SystemStack) -> Topics:
    return Topics(stack.state["topic_root"])


@pytest.fixture(scope="module")
def attacker(pki_dir: Path) -> tuple[Path, Path]:
    """A valid gateway certificate (CN gw-sec-a) issued by the operator's command."""
    done = cli("pki", "gateway", ATTACKER, "--dir", str(pki_dir))
    assert done.returncode == 0, done.stderr
    return pki_dir / f"{ATTACKER}.crt", pki_dir / f"{ATTACKER}.key"


def gateway_cert(stack: SystemStack, gateway: str) -> tuple[Path, Path]:
    gw = stack.state["gateways"][gateway]
    return Path(gw["cert_file"]), Path(gw["key_file"])


def count(stack: SystemStack, where: str) -> int:
    series = stack.influx(f"SELECT count(seq) FROM readings WHERE {where}")
    return int(series[0]["values"][0][1]) if series else 0


class OpenSession(Protocol):
    """The ``sessions`` fixture."""

    def __call__(
        self,
        cert: tuple[Path, Path] | None,
        client_id: str | None = None,
        *,
        clean_start: bool = True,
        session_expiry: int = 0,
    ) -> Session: ...


@pytest.fixture
def sessions(stack: SystemStack) -> Iterator[OpenSession]:
    """Factory of MQTT 5 sessions on the stack's TLS listener (or, with ``cert=None``, anonymous
    on its loopback plaintext listener); all are closed at teardown."""
    made: list[Session] = []

    def open_on_stack(
        cert: tuple[Path, Path] | None,
        client_id: str | None = None,
        *,
        clean_start: bool = True,
        session_expiry: int = 0,
    ) -> Session:
        port = stack.state["mqtt"]["local_port" if cert is None else "tls_port"]
        s = open_session(
            port,
            ca_file=stack.ca_file,
            cert=cert,
            client_id=client_id,
            clean_start=clean_start,
            session_expiry=session_expiry,
        )
        made.append(s)
        return s

    try:
        yield open_on_stack
    finally:
        for s in made:
            s.close()


_seq = iter(range(1, 1_000_000))


def batch(gateway_id: str, charger_id: str, *, seq: int | None = None) -> bytes:
    """A valid ReadingBatch with one reading of ``charger_id``, stamped now."""
    reading = {
        "charger_id": charger_id,
        "evse_id": 1,
        "connector_id": 1,
        "seq": next(_seq) if seq is None else seq,
        "ts": format_ts(dt.datetime.now(dt.UTC)),
        "status": "Charging",
        "values": {"power_w": 7200.0, "energy_wh": 1000.0},
    }
    return orjson.dumps({"schema": SCHEMA_ID, "gateway_id": gateway_id, "readings": [reading]})


def broker_log(stack: SystemStack) -> Path:
    return Path(stack.state["services"]["mosquitto"]["log_file"])


# === 1. who may connect =====================================================================


def test_a_state_dir_from_before_revocation_gets_a_crl_and_the_broker_names_it(
    stack: SystemStack, pki_dir: Path
) -> None:
    """``up`` on a state dir whose PKI has no crl.pem (made before revocation existed) creates
    an empty CRL signed by the CA, and the TLS listener's ``crlfile`` names it."""
    crl = x509.load_pem_x509_crl((pki_dir / "crl.pem").read_bytes())
    conf = (stack.dir / "mosquitto" / "mosquitto.conf").read_text()
    print(f"crl.pem: {len(list(crl))} entries, next update {crl.next_update_utc}")
    print(f"crlfile line: {[ln for ln in conf.splitlines() if ln.startswith('crlfile')]}")
    assert len(list(crl)) == 0
    assert f"crlfile {pki_dir / 'crl.pem'}" in conf.splitlines()


@pytest.mark.parametrize("tls_max", [None, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
@pytest.mark.parametrize("case", ["no certificate", "another CA", "expired"])
def test_tls_listener_refuses_clients_without_a_valid_certificate(
    stack: SystemStack, tmp_path: Path, pki_dir: Path, case: str, tls_max: ssl.TLSVersion | None
) -> None:
    """No client certificate, one from another CA (CN of a real gateway), or one signed by our CA
    whose notAfter has passed: refused by TLS, never a CONNACK. With TLS 1.2 the handshake itself
    fails; with TLS 1.3 the broker checks the certificate after the client's handshake and its
    alert arrives before any MQTT byte. A valid gateway certificate is the control."""
    now = dt.datetime.now(dt.UTC)
    cert: tuple[Path, Path] | None = None
    if case == "another CA":
        pki_mod.init(tmp_path / "other")
        cert = pki_mod.issue_gateway(tmp_path / "other", "gw-1")
    elif case == "expired":
        cert = sign_with_ca(
            pki_dir, tmp_path, "gw-1", now - dt.timedelta(days=10), now - dt.timedelta(days=1)
        )
    port = stack.state["mqtt"]["tls_port"]
    control = mqtt_connect(
        port, tls_context(stack.ca_file, gateway_cert(stack, "gw-1"), max_version=tls_max)
    )
    outcome = mqtt_connect(port, tls_context(stack.ca_file, cert, max_version=tls_max))
    print(f"[{case}, max {tls_max}] valid gw-1 certificate -> {control}; {case} -> {outcome}")
    assert control.accepted
    assert outcome.connack is None
    assert outcome.stage in {"handshake", "tls"}
    if tls_max == ssl.TLSVersion.TLSv1_2:
        assert outcome.stage == "handshake"


@pytest.mark.parametrize("version", ["TLSv1_1", "TLSv1"])
def test_tls_listener_refuses_tls_1_1_and_1_0(
    stack: SystemStack, pki_dir: Path, version: str
) -> None:
    """A client that offers only TLS 1.1 (or 1.0), with a valid gateway certificate, is refused at
    the handshake (``tls_version tlsv1.2``). Skipped when the local OpenSSL cannot speak that
    version at all (checked with a loopback handshake at SECLEVEL=0)."""
    tls_version = ssl.TLSVersion[version]
    reason = local_openssl_cannot_speak(tls_version, pki_dir)
    if reason is not None:
        pytest.skip(reason)
    ctx = old_tls(tls_version, tls_context(stack.ca_file, gateway_cert(stack, "gw-1")))
    outcome = mqtt_connect(stack.state["mqtt"]["tls_port"], ctx)
    print(f"local OpenSSL speaks {version} (loopback control); broker -> {outcome}")
    assert outcome.stage == "handshake"
    assert outcome.connack is None


# === 2. no plaintext listener beyond loopback ==============================================


def test_no_plaintext_listener_beyond_loopback(stack: SystemStack) -> None:
    """The broker's listening sockets are exactly its configured listeners; every one without a
    certificate is bound to loopback; a plaintext MQTT CONNECT to either TLS port (gateways',
    services') gets no CONNACK (while the same CONNECT on the loopback listener does: the
    control)."""
    conf = (stack.dir / "mosquitto" / "mosquitto.conf").read_text()
    listeners = conf_listeners(conf)
    sockets = listening_sockets(stack.pid("mosquitto"))
    print(f"configured listeners (port, bind, TLS): {listeners}")
    print(f"broker pid {stack.pid('mosquitto')} listens on: {sorted(sockets)}")
    assert {port for port, _, _ in listeners} == {port for _, port in sockets}
    tls_ports = {port for port, _, tls in listeners if tls}
    assert tls_ports == {stack.state["mqtt"]["tls_port"], stack.state["mqtt"]["service_port"]}
    for port, bind, tls in listeners:
        if not tls:
            assert ipaddress.ip_address(bind).is_loopback, (port, bind)
    for addr, port in sockets:
        assert port in tls_ports or ipaddress.ip_address(addr).is_loopback, (addr, port)

    plain_on_local = mqtt_connect(stack.state["mqtt"]["local_port"], None)
    for tls_port in sorted(tls_ports):
        plain_on_tls = mqtt_connect(tls_port, None)
        print(f"plaintext CONNECT to TLS port {tls_port} -> {plain_on_tls}")
        assert plain_on_tls.connack is None
    print(f"plaintext CONNECT to loopback port -> {plain_on_local}")
    assert plain_on_local.accepted


# === 3. a gateway is fenced to its own topics and chargers ==================================


def test_gateway_cannot_publish_to_another_gateways_readings(
    stack: SystemStack, topics: Topics, attacker: tuple[Path, Path], sessions: OpenSession
) -> None:
    """A gateway publishing a valid batch (claiming to be gw-2) on gw-2's readings topic gets
    PUBACK 135 and nothing of it is stored; its own reading, published next, is stored (the
    control that the pipeline was live)."""
    forged, own = f"sec-{uuid.uuid4().hex[:8]}", f"sec-{uuid.uuid4().hex[:8]}"
    a = sessions(attacker)
    assert a.connected, a.connack
    rc_forged = a.try_publish(topics.readings(VICTIM), batch(VICTIM, forged))
    rc_own = a.try_publish(topics.readings(ATTACKER), batch(ATTACKER, own))
    print(f"{ATTACKER} -> {topics.readings(VICTIM)}: PUBACK {rc_forged}; own topic: {rc_own}")
    assert rc_forged == NOT_AUTHORIZED
    assert isinstance(rc_own, int)
    assert rc_own < 0x80
    assert poll(lambda: count(stack, f"charger_id = '{own}'") == 1, 20)
    stored = count(stack, f"charger_id = '{forged}'")
    print(f"stored: own reading 1, forged reading {stored}")
    assert stored == 0


def test_gateway_subscribed_to_everything_receives_nothing_of_others(
    stack: SystemStack, topics: Topics, attacker: tuple[Path, Path], sessions: OpenSession
) -> None:
    """A gateway subscribing to ``chargers/#`` and ``chargers/v1/+/readings`` is granted the
    SUBACK (Mosquitto filters each message against the ACL at delivery) but receives nothing of
    gw-2's readings while they are being stored, nor anything outside its own topics."""
    a = sessions(attacker)
    everything = topics.root.split("/")[0] + "/#"
    sub_all = a.try_subscribe(everything)
    sub_readings = a.try_subscribe(topics.all_readings())
    before = count(stack, f"gateway_id = '{VICTIM}'")
    time.sleep(3)
    after = count(stack, f"gateway_id = '{VICTIM}'")
    seen = a.topics_seen()
    foreign = [t for t in seen if not t.startswith(f"{topics.root}/{ATTACKER}/")]
    print(f"SUBACK {everything}: {sub_all}; {topics.all_readings()}: {sub_readings}")
    print(f"{VICTIM} stored {after - before} readings meanwhile; {ATTACKER} received {seen}")
    assert after > before, "the control: gw-2's readings flowed during the window"
    assert foreign == []


def test_claiming_a_charger_bound_to_another_gateway_is_dead_lettered(
    stack: SystemStack, topics: Topics, attacker: tuple[Path, Path], sessions: OpenSession
) -> None:
    """A gateway sending, on its own topic, a reading for a charger bound to gw-2: the broker
    accepts it (its own topic), the bridge dead-letters it as ``charger_not_bound``, and nothing
    of it is stored."""
    series = stack.influx(
        f"SELECT last(seq) FROM readings WHERE gateway_id = '{VICTIM}' GROUP BY charger_id"
    )
    assert series, f"{VICTIM} has stored nothing yet"
    charger = str(series[0]["tags"]["charger_id"])
    watcher = sessions(None)  # anonymous, loopback listener: may read the dead-letter feed
    assert watcher.try_subscribe(topics.deadletter(ATTACKER)) == [1]
    a = sessions(attacker)
    rc = a.try_publish(topics.readings(ATTACKER), batch(ATTACKER, charger))
    with watcher.changed:
        watcher.changed.wait_for(lambda: bool(watcher.messages), 20)
        letters = [orjson.loads(m.payload) for m in watcher.messages]
    reasons = [letter["reason"] for letter in letters]
    stored = count(stack, f"charger_id = '{charger}' AND gateway_id = '{ATTACKER}'")
    print(
        f"{ATTACKER} claims {charger} (bound to {VICTIM}): PUBACK {rc}; dead letters "
        f"{reasons}; stored under {ATTACKER}: {stored}"
    )
    assert isinstance(rc, int)
    assert rc < 0x80
    assert reasons == ["charger_not_bound"]
    assert stored == 0


# === 4. usernames and client ids with + # / =================================================


@pytest.mark.parametrize("name", ["a+b", "a#b", "a/b", "+", "#"])
def test_pki_refuses_gateway_names_with_wildcards_or_slashes(pki_dir: Path, name: str) -> None:
    """``telemetry-stack pki gateway NAME`` refuses a name with ``+``, ``#`` or ``/`` with a
    clear error and writes nothing (the certificate CN becomes the MQTT username)."""
    before = sorted(p.name for p in pki_dir.iterdir())
    done = cli("pki", "gateway", name, "--dir", str(pki_dir))
    print(f"pki gateway {name!r} -> exit {done.returncode}: {done.stderr.strip()}")
    assert done.returncode == 2
    assert f"invalid gateway id {name!r}" in done.stderr
    assert sorted(p.name for p in pki_dir.iterdir()) == before


@pytest.mark.parametrize("cn", ["a+b", "#", "+"])
def test_broker_denies_everything_to_a_certificate_cn_with_a_wildcard(
    stack: SystemStack,
    topics: Topics,
    pki_dir: Path,
    tmp_path: Path,
    sessions: OpenSession,
    cn: str,
) -> None:
    """A certificate our CA signed for CN ``a+b``/``#``/``+`` (bypassing the PKI's check): the
    broker accepts the CONNECT, then its ACL denies every topic to a username with a wildcard
    (Mosquitto logs "dangerous username"): every publish gets PUBACK 135 and its subscription to
    everything delivers nothing while gw-2's readings flow."""
    now = dt.datetime.now(dt.UTC)
    cert = sign_with_ca(
        pki_dir, tmp_path, cn, now - dt.timedelta(minutes=5), now + dt.timedelta(hours=1)
    )
    s = sessions(cert)
    tried = {
        t: s.try_publish(t, batch(VICTIM, "sec-wild"))
        for t in (
            topics.readings(VICTIM),
            topics.state(VICTIM),
            topics.readings("gw-1"),
            topics.live("sec-wild"),
            topics.deadletter(VICTIM),
        )
    }
    sub = s.try_subscribe(topics.root.split("/")[0] + "/#")
    time.sleep(2)
    log_says = f'ACL denying access to client with dangerous username "{cn}"' in (
        broker_log(stack).read_text(errors="replace")
    )
    print(
        f"CN {cn!r}: CONNACK {s.connack}; PUBACKs {tried}; SUBACK {sub}; received "
        f"{s.topics_seen()}; broker log 'dangerous username': {log_says}"
    )
    assert all(rc == NOT_AUTHORIZED for rc in tried.values())
    assert s.topics_seen() == []
    assert log_says


def test_certificate_cn_with_a_slash_cannot_reach_another_gateways_topics(
    stack: SystemStack, topics: Topics, pki_dir: Path, tmp_path: Path, sessions: OpenSession
) -> None:
    """A certificate our CA signed for CN ``gw-2/reply/x`` (the PKI refuses such a name) is
    accepted, and Mosquitto substitutes it into the ACL patterns as several levels; still none
    of gw-2's real topics (readings, state, a reply topic) is writable: PUBACK 135."""
    now = dt.datetime.now(dt.UTC)
    cn = f"{VICTIM}/reply/x"
    cert = sign_with_ca(
        pki_dir, tmp_path, cn, now - dt.timedelta(minutes=5), now + dt.timedelta(hours=1)
    )
    s = sessions(cert)
    real = {
        t: s.try_publish(t, batch(VICTIM, "sec-slash"))
        for t in (topics.readings(VICTIM), topics.state(VICTIM), topics.reply(VICTIM, "op1"))
    }
    # What the pattern substitution does give it (documented in mosquitto/README.md):
    deeper = f"{topics.root}/{cn}/reply/y"
    rc_deeper = s.try_publish(deeper, b"{}")
    print(f"CN {cn!r}: CONNACK {s.connack}; gw-2's topics -> {real}; {deeper} -> {rc_deeper}")
    assert s.connack == "Success"
    assert all(rc == NOT_AUTHORIZED for rc in real.values())


@pytest.mark.parametrize("client_id", [f"{ATTACKER}/x", f"{ATTACKER}+", "#", "+"])
def test_client_ids_with_wildcards_or_slashes(
    stack: SystemStack,
    topics: Topics,
    attacker: tuple[Path, Path],
    sessions: OpenSession,
    client_id: str,
) -> None:
    """Mosquitto accepts any client id at CONNECT, and the gateway listener replaces it by the
    certificate CN (``use_username_as_clientid``), so none of ``/ + #`` changes anything: the
    gateway's own topic is allowed, gw-2's refused (PUBACK 135). (Before the replacement, a
    ``+`` or ``#`` in the client id made the ACL deny every topic.)"""
    s = sessions(attacker, client_id)
    own = s.try_publish(topics.readings(ATTACKER), batch(ATTACKER, f"sec-{uuid.uuid4().hex[:8]}"))
    other = s.try_publish(topics.readings(VICTIM), batch(VICTIM, "sec-cid"))
    print(
        f"client id {client_id!r}: CONNACK {s.connack}; own readings -> {own}; "
        f"{VICTIM}'s -> {other}"
    )
    assert s.connack == "Success"
    assert other == NOT_AUTHORIZED
    assert isinstance(own, int)
    assert own < 0x80


# === 5. the REST API ========================================================================


def problem(r: httpx.Response) -> str:
    body = r.json()
    return (
        f"{r.status_code} {r.headers.get('content-type')} {body.get('type')}: {body.get('detail')}"
    )


def test_rest_refuses_missing_wrong_and_other_role_keys(stack: SystemStack) -> None:
    """No X-API-Key or an unknown one: 401; the read key on ``POST /v1/telemetry``: 403; each as
    application/problem+json with the status in the body."""
    keys = stack.state["api"]["keys"]
    body = orjson.loads(batch("http-ingest", "sec-rest"))
    with httpx.Client(base_url=stack.state["api"]["url"], timeout=10) as api:
        cases = [
            ("no key", api.build_request("GET", "/v1/chargers"), 401),
            ("wrong key", api.build_request("GET", "/v1/chargers", headers=key("x" * 32)), 401),
            ("no key, ingest", api.build_request("POST", "/v1/telemetry", json=body), 401),
            (
                "read key, ingest",
                api.build_request("POST", "/v1/telemetry", json=body, headers=key(keys["read"])),
                403,
            ),
        ]
        for name, request, want in cases:
            r = api.send(request)
            print(f"{name} -> {problem(r)}")
            assert r.status_code == want, name
            assert r.headers["content-type"].startswith("application/problem+json"), name
            assert r.json()["status"] == want


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


#: Measurements written in the background, not by a request (docs/alarms.md).
BACKGROUND = frozenset({"alarms", "seqgaps"})


def db_snapshot(stack: SystemStack, until: str) -> dict[str, Any]:
    """Databases, measurements and the number of readings stored up to ``until``."""

    def show(q: str) -> list[Any]:
        url = f"{stack.state['influx']['url']}/query"
        r = httpx.get(url, params={"db": "telemetry", "q": q}, timeout=10)
        r.raise_for_status()
        return [row for s in r.json()["results"][0].get("series", []) for row in s["values"]]

    return {
        "databases": show("SHOW DATABASES"),
        # alarms and seqgaps are written by the alarm evaluator and the bridges' gap checks in
        # the background (whenever an earlier test's dead letter or gap raises the first one).
        "measurements": [m for m in show("SHOW MEASUREMENTS") if m[0] not in BACKGROUND],
        "readings up to T0": count(stack, f"time <= '{until}'"),
    }


HOSTILE_IDS = ["x' OR 1=1", "a;DROP", '"', "a" * 65]
HOSTILE_PARAMS: list[dict[str, str]] = [
    {"limit": str(10**9)},
    {"start": "-100y"},
    {"every": "NaN"},
    {"fields": "power_w;DROP MEASUREMENT readings"},
    {"agg": "mean) FROM readings; DROP DATABASE telemetry --"},
    {"cursor": "x' OR 1=1"},
    {"start": "now", "end": "-100y"},
]


def hostile_requests(api: httpx.Client, read: str, ingest: str) -> list[httpx.Request]:
    charger = "gw-1-cp001"
    out = [
        api.build_request("GET", f"/v1/chargers/{cid}/{ep}", headers=key(read))
        for cid in HOSTILE_IDS
        for ep in ("latest", "history", "stats")
    ]
    out += [
        api.build_request("GET", f"/v1/chargers/{charger}/history", params=p, headers=key(read))
        for p in HOSTILE_PARAMS
    ]
    out.append(
        api.build_request("GET", "/v1/chargers", params={"gateway": "x' OR 1=1"}, headers=key(read))
    )
    out.append(
        api.build_request(
            "GET", "/v1/fleet/daily", params={"date": "2026-01-01' OR 1=1"}, headers=key(read)
        )
    )
    reading = {
        "charger_id": "sec-rest",
        "ts": format_ts(dt.datetime.now(dt.UTC)),
        "values": {"power_w": 1.0},
    }
    bodies: list[dict[str, Any]] = [
        {**reading, "charger_id": "x' OR 1=1"},
        {**reading, "values": {'power_w",x=1 DROP': 1.0}},
        {**reading, "bogus": 1},  # an unknown field
        {**reading, "values": {"power_w": "NaN"}},
    ]
    out += [api.build_request("POST", "/v1/telemetry", json=b, headers=key(ingest)) for b in bodies]
    return out


def test_rest_refuses_hostile_ids_and_parameters_and_the_database_is_intact(
    stack: SystemStack,
) -> None:
    """Hostile charger ids in the path, hostile query parameters, a hostile gateway filter or
    date, and hostile or unknown fields in an ingest body: each is 422 problem+json. Afterwards
    the databases, the measurements and the readings stored up to T0 are what they were."""
    keys = stack.state["api"]["keys"]
    # Readings are stored within a second of their ts in normal flow: those up to T0 are all in.
    t0 = format_ts(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    before = db_snapshot(stack, t0)
    failures = []
    with httpx.Client(base_url=stack.state["api"]["url"], timeout=10) as api:
        for request in hostile_requests(api, keys["read"], keys["ingest"]):
            r = api.send(request)
            what = f"{request.method} {request.url.raw_path.decode()}"
            if request.content:
                what += f" {request.content.decode()}"
            print(f"{what} -> {problem(r) if r.status_code >= 400 else r.status_code}")
            if r.status_code != 422 or "problem+json" not in r.headers["content-type"]:
                failures.append((what, r.status_code))
        unknown = api.get(
            "/v1/chargers/gw-1-cp001/history", params={"bogus": "1"}, headers=key(keys["read"])
        )
    print(f"(observation) an unknown query parameter is ignored: {unknown.status_code}")
    after = db_snapshot(stack, t0)
    print(f"before: {before}\nafter:  {after}")
    assert failures == []
    assert before["readings up to T0"] > 0, "the control: readings were stored before T0"
    assert after == before


# === 1 (continued). revocation: restarts the broker =========================================


def test_revoked_gateway_is_refused_after_a_reload_while_the_others_connect(
    stack: SystemStack, pki_dir: Path, sessions: OpenSession
) -> None:
    """``pki revoke`` adds a gateway's certificate to crl.pem. Until the broker rereads it the
    certificate still connects; after SIGHUP (Mosquitto 2.0 rereads ``crlfile`` on reload) a new
    connection with it is refused while gw-1's is accepted; a session opened before the reload
    survives it, and ``telemetry-stack restart mosquitto`` ends it for good. The stack's gateways
    go on delivering; ``pki gateway`` then issues the revoked gateway a fresh certificate."""
    name = "gw-sec-revoked"
    assert cli("pki", "gateway", name, "--dir", str(pki_dir)).returncode == 0
    cert = (pki_dir / f"{name}.crt", pki_dir / f"{name}.key")
    port = stack.state["mqtt"]["tls_port"]
    gw1 = gateway_cert(stack, "gw-1")

    def attempt(c: tuple[Path, Path], tls_max: ssl.TLSVersion | None = None) -> Outcome:
        return mqtt_connect(
            port, tls_context(stack.ca_file, c, max_version=tls_max), f"sec-{uuid.uuid4().hex[:6]}"
        )

    assert attempt(cert).accepted
    held = sessions(cert)  # a session opened before the revocation
    assert held.connected
    revoked = cli("pki", "revoke", name, "--dir", str(pki_dir))
    print(f"pki revoke {name} -> exit {revoked.returncode}: {revoked.stdout.strip()}")
    assert revoked.returncode == 0
    print(f"before any reload: {name} -> {attempt(cert)}")

    os.kill(stack.pid("mosquitto"), signal.SIGHUP)
    time.sleep(1)
    after_hup, control = attempt(cert), attempt(gw1)
    print(
        f"after SIGHUP: {name} -> {after_hup}; gw-1 -> {control}; "
        f"session opened before: connected={held.connected}"
    )
    assert after_hup.connack is None
    assert after_hup.stage in {"handshake", "tls"}
    assert control.accepted

    stored_before = {gw: count(stack, f"gateway_id = '{gw}'") for gw in GATEWAYS}
    stack.restart("mosquitto")
    outcomes = {
        f"{name} (TLS 1.3)": attempt(cert),
        f"{name} (TLS 1.2)": attempt(cert, ssl.TLSVersion.TLSv1_2),
        "gw-1": attempt(gw1),
        "gw-2": attempt(gateway_cert(stack, "gw-2")),
    }
    with held.changed:
        held.changed.wait_for(lambda: held.disconnected is not None, WAIT_S)
    reconnected = poll(lambda: held.connected, 3)
    print(
        f"after restart: {outcomes}; session opened before: disconnected "
        f"({held.disconnected}), back: {reconnected}"
    )
    assert outcomes[f"{name} (TLS 1.2)"].stage == "handshake"
    assert outcomes[f"{name} (TLS 1.3)"].connack is None
    assert outcomes["gw-1"].accepted
    assert outcomes["gw-2"].accepted
    assert held.disconnected is not None
    assert not reconnected
    assert poll(
        lambda: all(count(stack, f"gateway_id = '{gw}'") > stored_before[gw] for gw in GATEWAYS), 30
    ), "the stack's gateways deliver again after the broker restart"

    again = cli("pki", "gateway", name, "--dir", str(pki_dir))
    fresh = attempt(cert)
    print(f"pki gateway {name} after revocation -> exit {again.returncode}; new cert -> {fresh}")
    assert again.returncode == 0
    assert fresh.accepted


# === the bridges' share group and session: a gateway cannot reach them =====================
# Mosquitto's ACL file cannot refuse a SUBSCRIBE or tie a client id to a certificate, so a
# gateway that knew the bridges' share group or client id could make the broker drop readings it
# already acknowledged (it hands the gateway its turn, then refuses delivery). The names carry a
# random part only the operator holds (provisioning/bridge_session.py); these tests attack with
# what a gateway can know: the documented defaults.


def test_the_bridges_names_are_not_the_documented_defaults(stack: SystemStack) -> None:
    """The running bridge's client id and share group each carry at least 128 random bits."""
    client_id = stack.service_setting("bridge", BridgeSettings, "client_id")
    group = stack.service_setting("bridge", BridgeSettings, "share_group")
    token = (stack.dir / FILE_NAME).read_text().strip()
    print(f"bridge client id and share group end in a {len(token) * 4}-bit token")
    assert client_id not in (DEFAULT_CLIENT_ID, "telemetry-bridge")
    assert group != SHARE_GROUP
    assert len(token) >= 32
    assert client_id.endswith(token)
    assert group.endswith(token)


def test_no_answer_or_log_line_reveals_the_bridges_secret(stack: SystemStack) -> None:
    """The token in the bridges' client id and share group is in no answer a read key gets
    (``/v1/pipeline/status``, ``/v1/gateways/{id}/gaps``), in none of the bridge's operational
    endpoints, and in no log line of the bridge, the API or the gateways (the broker's own log
    names clients by id: it is the operator's, like the state dir that holds the secret). The
    bridge is shown by its public name instead."""
    token = (stack.dir / FILE_NAME).read_text().strip()
    assert len(token) >= 32
    answers = {
        "/v1/pipeline/status": stack.api_get("/v1/pipeline/status"),
        "/v1/gateways/gw-1/gaps": stack.api_get("/v1/gateways/gw-1/gaps"),
    }
    bridge = stack.state["bridge"]["url"]
    api = stack.state["api"]["url"]
    for path in ("/status", "/metrics", "/readyz", "/healthz"):
        answers[f"bridge {path}"] = httpx.get(f"{bridge}{path}", timeout=10)
    for path in ("/metrics", "/readyz"):
        answers[f"api {path}"] = httpx.get(f"{api}{path}", timeout=10)
    for name, r in answers.items():
        print(f"{name}: {r.status_code}, {len(r.text)} characters")
        assert r.status_code in (200, 503), name
        assert token not in r.text, f"{name} reveals the bridge secret"
    shown = answers["/v1/pipeline/status"].json()["bridges"][0]["status"]["client_id"]
    print(f"the bridge is shown as {shown!r}")
    assert shown.startswith("telemetry-bridge-1")
    logs = sorted(p for p in (stack.dir / "logs").glob("*.log") if p.name != "mosquitto.log")
    assert {"bridge.log", "api.log"} <= {p.name for p in logs}
    for log in logs:
        text = log.read_text(errors="replace")
        leaks = [line for line in text.splitlines() if token in line]
        print(f"{log.name}: {len(text.splitlines())} lines, {len(leaks)} with the secret")
        assert leaks == [], f"{log.name}: {leaks[:3]}"


def test_gateway_joining_the_default_share_group_costs_no_reading(
    stack: SystemStack, topics: Topics, attacker: tuple[Path, Path], sessions: OpenSession
) -> None:
    """A gateway subscribing to ``$share/processors/{root}/+/readings`` (the documented default
    group) forms a group of its own: every reading accepted meanwhile is stored."""
    window = Window.open(stack, GATEWAYS)
    a = sessions(attacker)
    sub = a.try_subscribe(topics.shared_readings(SHARE_GROUP))
    time.sleep(4)
    a.client.disconnect()
    window.close(stack)
    print(
        f"{ATTACKER} SUBACK {topics.shared_readings(SHARE_GROUP)}: {sub}; "
        f"received {len(a.topics_seen())} messages"
    )
    lost = window.settle(stack, GAP_GRACE_S)
    assert not any(lost.values())
    assert a.topics_seen() == []


@pytest.mark.parametrize("client_id", [DEFAULT_CLIENT_ID, "telemetry-bridge", "telemetry-api"])
def test_gateway_using_a_default_service_client_id_costs_no_reading(
    stack: SystemStack, attacker: tuple[Path, Path], sessions: OpenSession, client_id: str
) -> None:
    """A gateway connecting with a documented default client id (and a persistent session)
    takes over nothing of the bridge's: every reading accepted meanwhile is stored."""
    log = broker_log(stack)
    offset = log.stat().st_size
    window = Window.open(stack, GATEWAYS)
    a = sessions(attacker, client_id, clean_start=False, session_expiry=3600)
    time.sleep(3)
    a.client.disconnect()
    window.close(stack)
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    bridge_id = stack.service_setting("bridge", BridgeSettings, "client_id")
    kicks = text.count(f"Client {bridge_id} already connected")
    print(f"{ATTACKER} as client id {client_id!r}: CONNACK {a.connack}; bridge kicked {kicks}x")
    lost = window.settle(stack, GAP_GRACE_S)
    assert kicks == 0
    assert not any(lost.values())
