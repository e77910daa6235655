"""OCPP 1.6 sampled values -> value keys, units, strict numbers, energy checks (no sockets)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent.ocpp.mapping import map_samples, value_key
from edge_agent.ocpp.models import MeterValue, SampledValue, parse_decimal
from edge_agent.ocpp.sanity import BACKWARDS, ZERO_AT_BEGIN, EnergyGuard
from edge_agent.ocpp.translate import Translator
from telemetry_common.schema import ValueKey

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def s(
    value: str, measurand: str | None = None, unit: str | None = None, **more: str
) -> SampledValue:
    return SampledValue(value=value, measurand=measurand, unit=unit, **more)


def mv(seconds: int, *samples: SampledValue) -> MeterValue:
    return MeterValue(timestamp=T0 + timedelta(seconds=seconds), sampled_value=list(samples))


@pytest.mark.parametrize(
    ("sample", "key"),
    [
        (s("1", "Energy.Active.Import.Register", "Wh"), "energy_wh"),
        (s("1"), "energy_wh"),  # 1.6: no measurand = the import register, in Wh
        (s("1", "Power.Active.Import", "W"), "power_w"),
        (s("1", "Current.Import", "A", phase="L1"), "current_l1_a"),
        (s("1", "Current.Import", "A", phase="L3"), "current_l3_a"),
        (s("1", "Current.Import", "A"), "current_a"),
        (s("1", "Voltage", "V"), "voltage_v"),
        (s("1", "Voltage", "V", phase="L2-N"), "voltage_l2_v"),
        (s("1", "Voltage", "V", phase="L1-L2"), "voltage_l1_l2_v"),
        (s("1", "SoC", "Percent", location="EV"), "soc_pct"),
        (s("1", "Temperature", "Celsius", location="Body"), "temperature_c"),
        (s("1", "Temperature", "Celsius", location="Cable"), "temperature_cable_c"),
        (s("1", "Frequency"), "frequency_hz"),
        (s("1", "Energy.Active.Export.Register", "Wh"), "energy_export_wh"),
        (s("1", "Energy.Active.Import.Register", "Wh", location="Inlet"), "energy_inlet_wh"),
        (s("1", "Power.Factor"), "power_factor"),
        (s("1", "Power.Reactive.Import", "kvar"), "power_reactive_var"),
        (s("1", "Vendor.Pilot-Duty", "Percent"), "vendor_pilot_duty_pct"),
        (s("1", "Vendor.Thing"), "vendor_thing"),
        (s("1", "Current.Import", "mA"), "current_ma"),
        (s("1", "42Things", "A"), "m_42things_a"),
        (s("1", "Status"), "m_status"),  # a reserved key is never produced
        (s("1", "Üñí©ødé ◆ measurand!!", "V"), "unide_measurand_v"),
        (s("1", "A" * 200, "Wh"), "a" * 60 + "_wh"),
    ],
)
def test_value_keys(sample: SampledValue, key: str) -> None:
    """Measurand, phase, location and unit give the docs/design.md key; anything unknown is
    sanitised into a valid key instead of being dropped."""
    got, _ = value_key(sample)
    assert got == key
    assert KEY_RE.fullmatch(got)


def test_wh_and_kwh_and_kw_are_normalised() -> None:
    """kWh -> Wh and kW -> W (the jsonl rule, reused); Wh and W are kept as sent."""
    wh = map_samples(
        [s("12400.5", "Energy.Active.Import.Register", "Wh"), s("7200", "Power.Active.Import", "W")]
    )
    kwh = map_samples(
        [
            s("12.4005", "Energy.Active.Import.Register", "kWh"),
            s("7.2", "Power.Active.Import", "kW"),
        ]
    )
    assert wh.values == {"energy_wh": 12400.5, "power_w": 7200.0}
    assert kwh.values == pytest.approx({"energy_wh": 12400.5, "power_w": 7200.0})
    assert set(kwh.values) == {"energy_wh", "power_w"}


def test_other_units_are_converted() -> None:
    """kvarh/kvar/kVA are scaled; Fahrenheit and Kelvin become Celsius."""
    got = map_samples(
        [
            s("2", "Energy.Reactive.Import.Register", "kvarh"),
            s("1.5", "Power.Offered", "kVA"),
            s("212", "Temperature", "Fahrenheit"),
            s("300.15", "Temperature", "K", location="Outlet", phase="L1"),
        ]
    )
    assert got.values == pytest.approx(
        {"energy_reactive_varh": 2000.0, "power_offered_va": 1500.0, "temperature_c": 100.0,
         "temperature_l1_c": 27.0}
    )  # fmt: skip


def test_per_phase_samples_each_get_their_key() -> None:
    """Three phases of current and voltage stay apart, with the phase before the unit."""
    samples = [s(f"{10 + n}", "Current.Import", "A", phase=f"L{n}") for n in (1, 2, 3)]
    samples += [s(f"{229 + n}", "Voltage", "V", phase=f"L{n}-N") for n in (1, 2, 3)]
    got = map_samples(samples)
    assert got.values == {
        "current_l1_a": 11.0, "current_l2_a": 12.0, "current_l3_a": 13.0,
        "voltage_l1_v": 230.0, "voltage_l2_v": 231.0, "voltage_l3_v": 232.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "text", ["12", "-3", "0.5", "007", "1e3", "1.25E-2", "230.000", "123456789012.5"]
)
def test_strict_decimals_accepted(text: str) -> None:
    """Plain ASCII decimals (optionally signed, with fraction or exponent) are numbers."""
    assert parse_decimal(text) == float(text)


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "+1", "1,5", "1_000", "0x1F", "NaN", "nan", "inf", "-Infinity", ".5", "5.",
     "1e999", "١٢", "12kWh", "1.2.3", "--1", "1e", "True"],
)  # fmt: skip
def test_strict_decimals_refused(text: str) -> None:
    """Anything else is refused, including NaN/inf, overflow and non-ASCII digits."""
    with pytest.raises(ValueError, match=r"decimal|range"):
        parse_decimal(text)


def test_bad_samples_are_counted_not_silent_and_neighbours_kept() -> None:
    """A bad value skips only its sample, is counted in ``invalid_samples`` and reported;
    signed samples carry no number and are counted apart; a duplicate key keeps the first."""
    got = map_samples(
        [
            s("7200", "Power.Active.Import", "W"),
            s("NaN", "Voltage", "V"),
            s("abc", "Current.Import", "A"),
            s("<signed blob>", "Energy.Active.Import.Register", format="SignedData"),
            s("7300", "Power.Active.Import", "W"),
        ]
    )
    assert got.values == {"power_w": 7200.0, "invalid_samples": 2.0}
    assert (got.invalid, got.signed) == (2, 1)
    assert len(got.problems) == 3
    assert any("power_w" in p for p in got.problems)


def test_every_key_passes_the_shared_schema() -> None:
    """Whatever the measurand, the key is a valid ValueKey (checked by the schema's own type)."""
    from pydantic import TypeAdapter

    adapter: TypeAdapter[str] = TypeAdapter(ValueKey)
    for measurand in ("", "_", "9", "x" * 300, "Time", "seq", "charger_id", "a.b-c d"):
        key, _ = value_key(s("1", measurand or None, "Wh"))
        assert adapter.validate_python(key) == key


def test_energy_guard_flags_backwards_and_zero_at_begin(caplog: pytest.LogCaptureFixture) -> None:
    """Backwards -> 1, a 0 at Transaction.Begin after a non-zero register -> 2; each flag is
    logged; the register follows the new value (a reset is flagged once); late values are not
    compared; a first value is never suspect."""
    g = EnergyGuard()
    t = [T0 + timedelta(seconds=n) for n in range(8)]
    with caplog.at_level(logging.WARNING):
        assert g.check("CP", 1, t[0], 0, begin=True) == 0  # nothing known yet
        assert g.check("CP", 1, t[1], 5000, begin=False) == 0
        assert g.check("CP", 1, t[2], 0, begin=True) == ZERO_AT_BEGIN
        assert g.check("CP", 1, t[3], 10, begin=False) == 0  # follows the reset
        assert g.check("CP", 1, t[4], 9, begin=False) == BACKWARDS
        assert g.check("CP", 1, t[1], 1, begin=False) == 0  # late: not compared
        assert g.check("CP", 1, t[5], 9, begin=False) == 0
        assert g.check("CP", 2, t[6], 1, begin=False) == 0  # another connector
        assert g.check("CP", 1, t[7], 0, begin=False) == BACKWARDS
    assert g.flagged == 3
    assert len([r for r in caplog.records if "suspect" in r.getMessage()]) == 3


def test_energy_guard_memory_is_bounded() -> None:
    """Only the most recently updated connectors are remembered."""
    g = EnergyGuard(max_connectors=2)
    for n in range(3):
        g.check(f"CP{n}", 1, T0, 100, begin=False)
    assert g.check("CP0", 1, T0, 1, begin=False) == 0  # forgotten: not compared
    assert g.check("CP2", 1, T0, 1, begin=False) == BACKWARDS


def _values(captures: list[Any]) -> list[dict[str, float]]:
    return [c.values for c in captures]


def test_translator_readings_carry_status_transaction_and_flags() -> None:
    """Status comes from the connector's last StatusNotification; the transaction id from the
    message (none: kept without); the suspicious zero at Transaction.Begin is flagged, and the
    values as measured are sent unchanged."""
    tr = Translator()
    [status] = tr.status_notification("CP", 1, "Charging", "NoError", T0)
    assert (status.status, status.values, status.ts) == ("Charging", {"error_code": 0.0}, T0)
    first = tr.meter_values("CP", 1, [mv(1, s("5000"))], None)
    begin = tr.meter_values("CP", 1, [mv(2, s("0", context="Transaction.Begin"))], 77)
    start = tr.register("CP", 1, T0 + timedelta(seconds=3), 0, 77, begin=True)
    assert _values(first) == [{"energy_wh": 5000.0}]
    assert _values(begin) == [{"energy_wh": 0.0, "energy_suspect": 2.0}]
    assert _values(start) == [{"energy_wh": 0.0}]  # the register is already 0: no new flag
    assert [c.transaction_id for c in first + begin + start] == [None, "77", "77"]
    assert {(c.status, c.connector_id, c.evse_id) for c in first + begin} == {("Charging", 1, 1)}
    assert tr.meter_values("CP", 2, [mv(4, s("1", "Voltage", "V"))], None)[0].status is None


def test_translator_error_codes_and_empty_meter_values() -> None:
    """A fault's errorCode is a number in ``error_code``; a meterValue of bad samples only is
    still a reading that shows the fault; one of signed samples only gives none."""
    tr = Translator()
    [fault] = tr.status_notification("CP", 0, "Faulted", "GroundFailure", T0)
    [odd] = tr.status_notification("CP", 0, "Faulted", "SomethingNew", T0)
    assert (fault.values, fault.connector_id, fault.evse_id) == ({"error_code": 3.0}, 0, 0)
    assert odd.values == {"error_code": 16.0}
    signed = s("<blob>", format="SignedData")
    got = tr.meter_values("CP", 1, [mv(1, s("x", "Voltage", "V")), mv(2, signed)], 1)
    assert _values(got) == [{"invalid_samples": 1.0}]
    assert (tr.invalid_samples, tr.signed_samples) == (1, 1)


def test_translator_refuses_what_the_schema_would_and_counts_it() -> None:
    """A reading the shared schema refuses (here: more than 64 value keys, a value beyond 1e15)
    is reported and counted, never handed to the agent (which would fail on it)."""
    tr = Translator()
    many = [s("1", f"Vendor.M{n}") for n in range(65)]
    assert tr.meter_values("CP", 1, [mv(1, *many)], None) == []
    assert tr.meter_values("CP", 1, [mv(2, s("1e16", "Power.Active.Import", "W"))], None) == []
    assert tr.rejected == 2
