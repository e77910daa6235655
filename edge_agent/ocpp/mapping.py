"""OCPP sampled values (1.6 and 2.0.1) -> our value keys (docs/design.md): pure, no state.

A key is ``stem[_phase][_location]_unit``: ``Current.Import`` on ``L2`` in ``A`` is
``current_l2_a``. kWh and kW are converted by :func:`edge_agent.jsonl.normalise_units` (the same
rule as the jsonl source: ``*_kwh`` -> ``*_wh``, ``*_kw`` -> ``*_w``); kvarh, kvar, kVA, Fahrenheit
and Kelvin are converted here. An unknown measurand, unit, phase or location is kept under a
sanitised key (lower case, ``[a-z0-9_]``), never dropped. See docs/ocpp.md for the full table.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from edge_agent.jsonl import normalise_units
from telemetry_common.storage import RESERVED_VALUE_KEYS

Convert = Callable[[float], float]


class Sample(Protocol):
    """One sampled value of either OCPP version (1.6: :class:`edge_agent.ocpp.models.SampledValue`,
    2.0.1: :class:`edge_agent.ocpp.v201.models.SampledValue`)."""

    @property
    def measurand(self) -> str | None: ...
    @property
    def phase(self) -> str | None: ...
    @property
    def location(self) -> str | None: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def context(self) -> str | None: ...
    @property
    def signed(self) -> bool:
        """It carries a signature instead of a number (1.6 ``SignedData``): skipped."""
        ...

    def number(self) -> float:
        """The value as a finite number (with 2.0.1's multiplier); ValueError if it is not."""
        ...


DEFAULT_MEASURAND = "Energy.Active.Import.Register"  # OCPP 1.6: when measurand is omitted
#: measurand -> (key stem, unit when the sample names none, location that needs no suffix)
MEASURANDS: dict[str, tuple[str, str, str]] = {
    "Energy.Active.Import.Register": ("energy", "Wh", "Outlet"),
    "Energy.Active.Export.Register": ("energy_export", "Wh", "Outlet"),
    "Energy.Reactive.Import.Register": ("energy_reactive", "varh", "Outlet"),
    "Energy.Reactive.Export.Register": ("energy_reactive_export", "varh", "Outlet"),
    "Energy.Active.Import.Interval": ("energy_interval", "Wh", "Outlet"),
    "Energy.Active.Export.Interval": ("energy_export_interval", "Wh", "Outlet"),
    "Energy.Reactive.Import.Interval": ("energy_reactive_interval", "varh", "Outlet"),
    "Energy.Reactive.Export.Interval": ("energy_reactive_export_interval", "varh", "Outlet"),
    "Power.Active.Import": ("power", "W", "Outlet"),
    "Power.Active.Export": ("power_export", "W", "Outlet"),
    "Power.Offered": ("power_offered", "W", "Outlet"),
    "Power.Reactive.Import": ("power_reactive", "var", "Outlet"),
    "Power.Reactive.Export": ("power_reactive_export", "var", "Outlet"),
    "Power.Factor": ("power_factor", "", "Outlet"),
    "Current.Import": ("current", "A", "Outlet"),
    "Current.Export": ("current_export", "A", "Outlet"),
    "Current.Offered": ("current_offered", "A", "Outlet"),
    "Voltage": ("voltage", "V", "Outlet"),
    "Frequency": ("frequency", "Hz", "Outlet"),
    "Temperature": ("temperature", "Celsius", "Body"),
    "SoC": ("soc", "Percent", "EV"),
    "RPM": ("rpm", "", "Outlet"),
}


def _same(v: float) -> float:
    return v


def _kilo(v: float) -> float:
    return v * 1000.0


#: unit -> (key suffix, conversion); kWh/kW keep their suffix for normalise_units.
UNITS: dict[str, tuple[str, Convert]] = {
    "Wh": ("wh", _same),
    "kWh": ("kwh", _same),
    "W": ("w", _same),
    "kW": ("kw", _same),
    "varh": ("varh", _same),
    "kvarh": ("varh", _kilo),
    "var": ("var", _same),
    "kvar": ("var", _kilo),
    "VA": ("va", _same),
    "kVA": ("va", _kilo),
    "A": ("a", _same),
    "V": ("v", _same),
    "Hz": ("hz", _same),
    "Celsius": ("c", _same),
    "Fahrenheit": ("c", lambda f: (f - 32.0) * 5.0 / 9.0),
    "K": ("c", lambda k: k - 273.15),
    "Percent": ("pct", _same),
}
PHASES = {
    "L1": "l1", "L2": "l2", "L3": "l3", "N": "n",
    "L1-N": "l1", "L2-N": "l2", "L3-N": "l3",
    "L1-L2": "l1_l2", "L2-L3": "l2_l3", "L3-L1": "l3_l1",
}  # fmt: skip

_NOT_KEY = re.compile(r"[^a-z0-9]+")
MAX_KEY = 63


def sanitise(name: str) -> str:
    """Any string -> ASCII ``[a-z0-9_]`` words joined by ``_`` (empty if nothing is left)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return _NOT_KEY.sub("_", ascii_name.lower()).strip("_")


def value_key(sample: Sample) -> tuple[str, Convert]:
    """The value key of one sampled value and the conversion its number needs."""
    measurand = sample.measurand or DEFAULT_MEASURAND
    stem, natural_unit, natural_location = MEASURANDS.get(measurand, (sanitise(measurand), "", ""))
    unit = sample.unit if sample.unit is not None else natural_unit
    suffix, convert = UNITS.get(unit, (sanitise(unit), _same))
    parts = [stem or "measurand"]
    if sample.phase:
        parts.append(PHASES.get(sample.phase) or sanitise(sample.phase))
    if sample.location and sample.location not in ("Outlet", natural_location):
        parts.append(sanitise(sample.location))
    key = "_".join(p for p in parts if p)
    if len(key) + len(suffix) + 1 > MAX_KEY:
        key = key[: MAX_KEY - len(suffix) - 1].rstrip("_")
    if suffix:
        key = f"{key}_{suffix}"
    if not key[0].isalpha() or key in RESERVED_VALUE_KEYS:
        key = f"m_{key}"[:MAX_KEY]
    return key, convert


@dataclass(slots=True)
class Mapped:
    """The values of one meterValue, what was wrong with some samples, and its contexts."""

    values: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    contexts: set[str] = field(default_factory=set)
    invalid: int = 0
    signed: int = 0


def map_samples(samples: Iterable[Sample]) -> Mapped:
    """Map the sampled values of one meterValue. A sample whose value is not a finite decimal is
    skipped and counted (``invalid_samples`` in the values); a signed sample (``SignedData``)
    carries no number and is skipped; a second sample with the same key is reported."""
    out = Mapped()
    raw: dict[str, float] = {}
    for s in samples:
        if s.context:
            out.contexts.add(s.context)
        if s.signed:
            out.signed += 1
            continue
        key, convert = value_key(s)
        try:
            number = convert(s.number())
        except ValueError as exc:
            out.invalid += 1
            out.problems.append(f"{s.measurand or DEFAULT_MEASURAND} ({key}): {exc}")
            continue
        if key in raw:
            out.problems.append(f"{key}: a second sample in one meterValue, kept the first")
            continue
        raw[key] = number
    out.values = normalise_units(raw)
    if out.invalid:
        out.values["invalid_samples"] = float(out.invalid)
    return out


#: StatusNotification errorCode -> ``error_code`` value (0 = NoError; the 1.6 enum's order).
ERROR_CODES: dict[str, int] = {
    name: n
    for n, name in enumerate(
        (
            "NoError", "ConnectorLockFailure", "EVCommunicationError", "GroundFailure",
            "HighTemperature", "InternalError", "LocalListConflict", "OtherError",
            "OverCurrentFailure", "OverVoltage", "PowerMeterFailure", "PowerSwitchFailure",
            "ReaderFailure", "ResetFailure", "UnderVoltage", "WeakSignal",
        )
    )
}  # fmt: skip
