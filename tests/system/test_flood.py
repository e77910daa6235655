"""Issue 21's flood, on a stack from ``telemetry-stack up``: one gateway sends 100 messages of
1,000 new charger ids, then 250 messages of 1,000 invalid readings; meanwhile another gateway's
readings keep being stored with ``latest`` at most 5 s old (and, with the per-gateway limits, a
charger it never sent for before is accepted: see LIMITS below). The dead letters come in bulk:
one record (one publish, one stored point) per message, and a handful of WARNING lines, not
250,000.

The scenario is tests/support/flood.py (bench/deadletter_flood.py prints its figures, before
and after). ``pytest -s`` prints them here too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.flood import run_flood
from tests.support.system_stack import BIN, SystemStack

pytestmark = pytest.mark.system

#: The issue's bound on the other gateway's ``latest`` age, and on its new charger.
MAX_AGE_S = 5.0
#: The whole scenario's bound (it took 9 s on a quiet machine, 46 s under load; with the old
#: per-reading dead letters the invalid readings alone took more than 8 minutes).
SCENARIO_S = 300.0


def test_one_gateways_flood_leaves_another_gateway_current(tmp_path: Path) -> None:
    with SystemStack(tmp_path / "stack").running(0, 1) as stack:
        figures = run_flood(stack.state, BIN, timeout_s=SCENARIO_S, echo=print)
    print(figures)
    # The other gateway, while the flood's 250,000 invalid readings are dead-lettered: its
    # readings stored, `latest` never more than 5 s old (bulk dead letters, batches and live
    # feed shared per gateway). Measured on a quiet 2-core machine: 3.1 s at worst, the 250,000
    # handled in 4.0 s. The bridge shares what it holds fairly, but it holds 16 MiB (Mosquitto's
    # max_inflight_bytes, ~165 of these messages): the other gateway's messages wait in the
    # broker's queue behind the rest of the flood, so a machine busy elsewhere (12 to 38 s seen
    # with a load average of 15) or a longer flood exceeds the bound (bench/README.md,
    # "Dead-letter flood benchmark").
    ages = figures["calm_latest_max_age_by_phase_s"]
    assert ages["invalid"] <= MAX_AGE_S, (ages, figures["calm_latest_worst"])
    assert figures["calm_publish_failures"] == []
    # The flood: every invalid reading dead-lettered, one record per message.
    assert figures["deadletter_readings"] == 250 * 1000
    assert figures["deadletter_publishes"] == 250
    assert figures["deadletter_points"] == 250
    assert figures["warning_lines"] <= 10  # one a minute per gateway and reason
    # The per-gateway limits: of the flood's 100,000 new charger ids, the hour's budget
    # (LIMIT_NEW_CHARGERS_PER_HOUR, 200) is stored, the rest dead-lettered `limit_exceeded` in
    # bulk (one record per message). So InfluxDB's max-values-per-tag (100,000) is never
    # reached and the other gateway's new charger is accepted (without the limits it was not:
    # InfluxDB then refuses every new charger id of the fleet), its `latest` current meanwhile.
    assert figures["limit_exceeded"] == 100 * 1000 - 200
    assert figures["new_chargers_stored"] == 200
    assert figures["new_chargers_deadletter_readings"] == 100 * 1000 - 200
    assert figures["new_chargers_deadletter_publishes"] == 100
    accepted = figures["new_charger_accepted_after_s"]
    assert accepted is not None, figures
    assert accepted <= MAX_AGE_S, figures
    assert ages["new_chargers"] <= MAX_AGE_S, (ages, figures["calm_latest_worst"])
    assert figures["calm_latest_max_age_s"] <= MAX_AGE_S, figures["calm_latest_worst"]
