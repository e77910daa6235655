"""Energy between two register readings, as a billing system expects it."""

from __future__ import annotations

from decimal import Decimal


def register_difference(start_wh: float, stop_wh: float) -> float:
    """``stop_wh - start_wh`` computed on the registers' decimal forms (``repr``, the shortest
    form that reads back as the same float, i.e. what the meter sent), then made a float: a
    register read as 1204178.9 and 1204419.1 gives 240.2 Wh, not the binary difference
    240.20000000018626. Integral registers (OCPP's meterStart/meterStop) are exact either way."""
    return float(Decimal(repr(float(stop_wh))) - Decimal(repr(float(start_wh))))
