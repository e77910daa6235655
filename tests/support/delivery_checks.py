"""What the whole-stack fault tests assert about delivery, against a :class:`SystemStack`:
nothing an edge accepted is lost or stored twice, ``latest`` is the newest stored reading, and
the bridges' gap report names exactly what InfluxDB lacks; :class:`Window` accounts for
the readings accepted during an attack."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tests.support.system_stack import Account, SystemStack
from tests.support.waiting import poll


def settle(stack: SystemStack, gateways: list[str], services: list[str]) -> list[Account]:
    """Stop ``services`` (SIGTERM), wait until what the gateways accepted is stored, report."""
    for name in services:
        stack.stop(name)
    accounts = stack.wait_delivered(gateways, timeout=90)
    for a in accounts:
        print(a.line())
    return accounts


def assert_nothing_lost(accounts: list[Account]) -> None:
    for a in accounts:
        assert a.accepted > 0, a.line()
        assert not a.lost, f"{a.line()}; first lost seqs {a.lost[:10]}"
        assert a.duplicates == 0, a.line()


def assert_latest_is_newest_stored(stack: SystemStack) -> None:
    """For every charger, the API's latest reading is the newest one InfluxDB holds. InfluxDB's
    newest is read again each round: a bridge may still be storing what the broker queued
    before the gateways stopped (a snapshot taken once would name a reading already replaced)."""
    deadline = time.monotonic() + 20
    while True:
        series = stack.influx("SELECT last(seq) FROM readings GROUP BY charger_id")
        newest = {s["tags"]["charger_id"]: int(s["values"][0][1]) for s in series}
        assert newest, "nothing stored"
        got = {}
        for charger in newest:
            r = stack.api_get(f"/v1/chargers/{charger}/latest")
            got[charger] = int(r.json()["seq"]) if r.status_code == 200 else None
        if got == newest or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    differ = {c: (got[c], newest[c]) for c in newest if got[c] != newest[c]}
    assert got == newest, f"charger: (API latest seq, newest stored seq): {differ}"


def unstored_below_newest(stack: SystemStack, gateways: list[str]) -> dict[str, set[int]]:
    """Per gateway, the seqs InfluxDB lacks below the newest seq it holds."""
    out: dict[str, set[int]] = {}
    for gw in gateways:
        stored, _ = stack.stored_seqs(gw)
        if stored and (lacking := set(range(1, max(stored) + 1)) - stored):
            out[gw] = lacking
    return out


def confirmed_gaps(
    stack: SystemStack, bridge_urls: list[str]
) -> tuple[dict[str, set[int]], dict[str, int]]:
    """Per gateway, the seqs the bridges' confirmed gaps cover and how many readings they say
    are missing (the union over the bridges, as the API's /v1/pipeline merges them)."""
    seqs: dict[str, set[int]] = {}
    missing: dict[str, int] = {}
    for url in bridge_urls:
        for gw, gaps in stack.http_json(f"{url}/status")["seq_gaps"].items():
            for g in gaps:
                if g["state"] == "confirmed":
                    seqs.setdefault(gw, set()).update(range(g["first_seq"], g["last_seq"] + 1))
                    missing[gw] = missing.get(gw, 0) + int(g["missing"])
    return seqs, missing


def assert_gap_report_matches(
    stack: SystemStack, gateways: list[str], bridge_urls: list[str]
) -> dict[str, set[int]]:
    """The bridges' confirmed gaps name exactly the seqs InfluxDB lacks (polled until they
    agree, bounded); returns those seqs per gateway."""
    expected = unstored_below_newest(stack, gateways)
    want_missing = {gw: len(s) for gw, s in expected.items()}
    deadline = time.monotonic() + 30
    while True:
        seqs, missing = confirmed_gaps(stack, bridge_urls)
        if (seqs, missing) == (expected, want_missing) or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(f"gap report: confirmed missing {missing or 'nothing'}")
    assert missing == want_missing
    assert seqs == expected
    return expected


@dataclass
class Window:
    """The seqs each of ``gateways`` accepted during a window (an attack, a fault), and later
    what became of them."""

    gateways: list[str]
    first: dict[str, int]
    last: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, stack: SystemStack, gateways: list[str]) -> Window:
        return cls(gateways, {gw: stack.held_seqs(gw)[0] + 1 for gw in gateways})

    def close(self, stack: SystemStack) -> None:
        self.last = {gw: stack.held_seqs(gw)[0] for gw in self.gateways}

    def lost(self, stack: SystemStack) -> dict[str, list[int]]:
        out = {}
        for gw in self.gateways:
            stored, _ = stack.stored_seqs(gw)
            _, held, _ = stack.held_seqs(gw)
            window = set(range(self.first[gw], self.last[gw] + 1))
            out[gw] = sorted(window - stored - held)
        return out

    def reported(self, stack: SystemStack) -> dict[str, int]:
        """Readings the bridge reports as confirmed missing in gaps within the window."""
        gaps = stack.bridge_status()["seq_gaps"]
        return {
            gw: sum(
                int(g["missing"] or 0)
                for g in gaps.get(gw, [])
                if g["first_seq"] <= self.last[gw] and g["last_seq"] >= self.first[gw]
            )
            for gw in self.gateways
        }

    def settle(
        self, stack: SystemStack, gap_grace_s: float, timeout: float = 20
    ) -> dict[str, list[int]]:
        """Wait (bounded) for the window's readings to be stored; print and return the lost
        ones, with what the bridge's gap report (confirmed after ``gap_grace_s``) says."""
        poll(lambda: not any(self.lost(stack).values()), timeout, interval=0.3)
        lost = self.lost(stack)
        want = {gw: len(seqs) for gw, seqs in lost.items()}
        poll(lambda: self.reported(stack) == want, gap_grace_s + 10, interval=0.3)
        reported = self.reported(stack)
        for gw in self.gateways:
            n = self.last[gw] - self.first[gw] + 1
            print(
                f"{gw}: accepted {n} during the attack, lost {len(lost[gw])} "
                f"(bridge reports {reported[gw]} confirmed missing): {lost[gw][:12]}"
            )
        return lost
