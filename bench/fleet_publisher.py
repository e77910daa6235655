"""Fleet publisher, run in several processes by ``bench.stored_acks_fleet``: many simulated
gateways in one process, each its own MQTT 5 connection over TLS with its own certificate
(CN = gateway id, so the broker's ACL applies to it as to a real gateway).

Each gateway:

- connects with a persistent session (clean start off, ``--session-expiry`` seconds) and
  subscribes (QoS 1) to its own ``{root}/{gateway}/stored``, as the edge agent does;
- publishes one ReadingBatch every ``--interval`` seconds (QoS 1), one reading per charger
  (``--chargers``), seqs consecutive from 1; the gateways' publishes are spread evenly over the
  interval;
- records, per stored acknowledgement, when it arrived and how many seqs its ranges name, and
  per message the delay from its publish to the acknowledgement that covers it.

It does not wait for acknowledgements before publishing (at one message a second, a gateway is
far from the edge's ``MAX_UNCONFIRMED``) and keeps no outbox: the scenario is the steady state of
a fleet, and what it measures is the acknowledgement traffic and its cost to the bridge.

One thread drives every connection (paho's ``loop_read``/``loop_write``/``loop_misc`` from a
selector): a thread per connection would cost more CPU than the gateways themselves. Runs until
``--stop-file`` exists (checked every 0.2 s) or ``--max-seconds`` passed, then writes its records
as JSON to ``--out`` and disconnects.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import selectors
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench.harness.readings import batch_payload, reading
from telemetry_common.schema import format_ts
from telemetry_common.tls import client_context
from telemetry_common.topics import DEFAULT_ROOT, Topics

CONNECT_TIMEOUT_S = 120.0


@dataclass
class Gateway:
    """One simulated gateway: its connection, next seq, and messages awaiting acknowledgement."""

    index: int
    name: str
    client: paho.Client
    topic: str
    chargers: list[str]
    seq: int = 1
    sock: object | None = None
    ready: bool = False
    lost: bool = False
    #: (first seq, last seq, publish time) of each message not yet acknowledged, oldest first.
    pending: deque[tuple[int, int, float]] = field(default_factory=deque)


@dataclass
class Records:
    """What the gateways of this process saw (times are wall clock, seconds)."""

    pub_t: list[float] = field(default_factory=list)
    pub_refused: int = 0
    ack_t: list[float] = field(default_factory=list)
    ack_gw: list[int] = field(default_factory=list)
    ack_seqs: list[int] = field(default_factory=list)  # seqs the acknowledgement's ranges name
    msg_ack_t: list[float] = field(default_factory=list)
    msg_pub_t: list[float] = field(default_factory=list)
    disconnects: int = 0


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topics = Topics(args.topic_root)
        self.rec = Records()
        self.sel = selectors.DefaultSelector()
        self.gateways: list[Gateway] = []
        pki = Path(args.pki_dir)
        for k in range(args.count):
            index = args.first + k
            name = f"{args.prefix}{index:05d}"
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
            client.tls_set_context(
                client_context(pki / "ca.crt", pki / f"{name}.crt", pki / f"{name}.key")
            )
            gw = Gateway(
                index,
                name,
                client,
                self.topics.readings(name),
                [f"{name}-cp{c}" for c in range(args.chargers)],
            )
            client.user_data_set(gw)
            client.on_connect = self._on_connect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            client.on_publish = self._on_publish
            client.on_disconnect = self._on_disconnect
            self.gateways.append(gw)

    # --- paho callbacks (all on this process's one thread) --------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        gw: Gateway,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            print(f"{gw.name}: connect refused: {reason_code}", file=sys.stderr)
            gw.lost = True
            return
        client.subscribe(self.topics.stored(gw.name), qos=1)

    def _on_subscribe(
        self,
        client: paho.Client,
        gw: Gateway,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            print(f"{gw.name}: subscription refused: {reason_codes}", file=sys.stderr)
            gw.lost = True
        gw.ready = True

    def _on_publish(
        self,
        client: paho.Client,
        gw: Gateway,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # 0x10 "no matching subscribers" is a success code: not counted as refused.
        if reason_code.is_failure:
            self.rec.pub_refused += 1

    def _on_disconnect(
        self,
        client: paho.Client,
        gw: Gateway,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self.stopping:
            print(f"{gw.name}: disconnected: {reason_code}", file=sys.stderr)
            self.rec.disconnects += 1
        gw.lost = True
        if gw.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(gw.sock)  # type: ignore[arg-type]
            gw.sock = None

    def _on_message(self, client: paho.Client, gw: Gateway, msg: paho.MQTTMessage) -> None:
        now = time.time()
        body = orjson.loads(msg.payload)
        ranges: list[list[int]] = body["seqs"]
        rec = self.rec
        rec.ack_t.append(now)
        rec.ack_gw.append(gw.index)
        rec.ack_seqs.append(sum(b - a + 1 for a, b in ranges))
        # A message's seqs are stored in one commit, so one range covers all of them.
        keep: deque[tuple[int, int, float]] = deque()
        for first, last, t_pub in gw.pending:
            if any(a <= first and last <= b for a, b in ranges):
                rec.msg_ack_t.append(now)
                rec.msg_pub_t.append(t_pub)
            else:
                keep.append((first, last, t_pub))
        gw.pending = keep

    # --- the loop ---------------------------------------------------------------------------

    stopping = False

    def _pump(self, timeout: float) -> None:
        """One select: read what arrived, write what waits."""
        for key, _ in self.sel.select(timeout):
            gw: Gateway = key.data
            if gw.lost:
                continue
            client = gw.client
            client.loop_read()
            sock = client.socket()
            # Bytes TLS already decrypted are not seen by select: read them now.
            while sock is not None and getattr(sock, "pending", lambda: 0)() > 0:
                client.loop_read()
                sock = client.socket()

    def _sweep(self, misc: bool) -> None:
        for gw in self.gateways:
            if gw.lost:
                continue
            client = gw.client
            if client.want_write():
                client.loop_write()
            if misc:
                client.loop_misc()

    def connect(self, deadline: float) -> float:
        """Connect and subscribe every gateway; seconds it took."""
        t0 = time.monotonic()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.args.session_expiry
        for gw in self.gateways:
            gw.client.connect(
                self.args.host, self.args.port, keepalive=60, clean_start=False, properties=props
            )
            sock = gw.client.socket()
            assert sock is not None
            gw.sock = sock
            self.sel.register(sock, selectors.EVENT_READ, gw)
            self._pump(0)
        while not all(gw.ready or gw.lost for gw in self.gateways):
            if time.monotonic() > deadline:
                raise RuntimeError("gateways did not connect and subscribe in time")
            self._pump(0.05)
            self._sweep(False)
        lost = [gw.name for gw in self.gateways if gw.lost]
        if lost:
            raise RuntimeError(f"{len(lost)} gateways could not connect: {lost[:5]}")
        return time.monotonic() - t0

    def publish(self, gw: Gateway) -> None:
        now = time.time()
        ts = format_ts_now(now)
        first = gw.seq
        readings = []
        for cid in gw.chargers:
            readings.append(reading(cid, gw.seq, ts, float(gw.seq)))
            gw.seq += 1
        payload = batch_payload(gw.name, readings)
        info = gw.client.publish(gw.topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"{gw.name}: publish failed: {paho.error_string(info.rc)}")
        gw.pending.append((first, gw.seq - 1, now))
        self.rec.pub_t.append(now)

    def run(self) -> dict[str, Any]:
        a = self.args
        deadline = time.monotonic() + a.max_seconds
        connect_s = self.connect(deadline)
        cpu_connect = _cpu()
        Path(a.ready_file).write_text("ready", encoding="utf-8")
        n = len(self.gateways)
        step = a.interval / n
        t0 = time.monotonic()
        k = 0  # publishes so far: gateway k % n is next, due at t0 + k * step
        next_check = t0
        next_misc = t0 + 1.0
        stop = Path(a.stop_file)
        while True:
            now = time.monotonic()
            if now >= next_check:
                if stop.exists() or now > deadline:
                    break
                next_check = now + 0.2
                misc = now >= next_misc
                if misc:
                    next_misc = now + 1.0
                self._sweep(misc)
            while t0 + k * step <= now:
                gw = self.gateways[k % n]
                if not gw.lost:
                    self.publish(gw)
                k += 1
            wait = max(0.0, min(t0 + k * step, next_check) - time.monotonic())
            self._pump(wait)
        self.stopping = True
        cpu_total = _cpu()
        for gw in self.gateways:
            if not gw.lost:
                gw.client.disconnect()
        rec = self.rec
        return {
            "gateways": n,
            "connect_seconds": connect_s,
            "cpu_s_connect": cpu_connect,
            "cpu_s": cpu_total,
            "published": len(rec.pub_t),
            "pub_refused": rec.pub_refused,
            "disconnects": rec.disconnects,
            "unacknowledged_at_end": sum(len(gw.pending) for gw in self.gateways),
            "pub_t": rec.pub_t,
            "ack_t": rec.ack_t,
            "ack_gw": rec.ack_gw,
            "ack_seqs": rec.ack_seqs,
            "msg_ack_t": rec.msg_ack_t,
            "msg_pub_t": rec.msg_pub_t,
        }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def format_ts_now(now: float) -> str:
    """The reading timestamp of ``now`` (wall clock seconds)."""
    return format_ts(datetime.fromtimestamp(now, UTC))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_publisher", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pki-dir", required=True, help="ca.crt and NAME.crt/NAME.key per gateway")
    p.add_argument("--prefix", default="fleet-gw-", help="gateway id = PREFIX + 5-digit index")
    p.add_argument("--first", type=int, default=0, help="index of this process's first gateway")
    p.add_argument("--count", type=int, required=True, help="gateways in this process")
    p.add_argument("--chargers", type=int, default=4, help="readings per message")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between a gateway's messages"
    )
    p.add_argument("--session-expiry", type=int, default=600, help="seconds (persistent session)")
    p.add_argument("--topic-root", default=DEFAULT_ROOT)
    p.add_argument("--ready-file", required=True, help="written once every gateway subscribed")
    p.add_argument("--stop-file", required=True, help="stop publishing once this file exists")
    p.add_argument("--max-seconds", type=float, default=900.0, help="bound on the whole run")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.count < 1 or args.chargers < 1 or args.interval <= 0:
        p.error("--count and --chargers must be positive, --interval > 0")
    result = Fleet(args).run()
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
