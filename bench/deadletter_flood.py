"""The cost of a dead-letter flood, and what it does to another gateway (issue 21, item 3).

On a stack from ``telemetry-stack up --detach --gateways 0`` (in a temporary state dir): a calm
gateway publishes one reading of each of its 5 chargers every 0.5 s; a flooding gateway publishes
100 messages of 1,000 new charger ids, then 250 messages of 1,000 invalid readings; halfway
through those the calm gateway sends for a charger it never sent before. Printed: how long the
bridge took to handle the invalid readings (until the dead-letter feed held them all), dead-letter
publishes, stored dead-letter points and InfluxDB write requests per message, WARNING lines,
the calm gateway's largest ``latest`` age and how long its new charger took to be accepted.

``--code DIR`` runs the stack's services from another checkout (``PYTHONPATH=DIR``: e.g. a
``git archive`` of the commit before, for a before/after from the same session). The scenario
itself is tests/support/flood.py (tests/system/test_flood.py runs it with assertions).

    PYTHONPATH=$PWD .venv/bin/python -m bench.deadletter_flood [--code DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.flood import run_flood

BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, help="run the stack's services from this checkout")
    ap.add_argument("--new-messages", type=int, default=100)
    ap.add_argument("--invalid-messages", type=int, default=250)
    ap.add_argument("--per", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=900.0, help="the scenario's bound (s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # SIGTERM ends it like Ctrl-C: the stack it started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = dict(os.environ)
    if args.code is not None:
        env["PYTHONPATH"] = str(args.code.resolve())
    with tempfile.TemporaryDirectory(prefix="dlflood-") as tmp:
        state_dir = Path(tmp) / "stack"
        cli = [str(BIN / "telemetry-stack")]
        subprocess.run(
            [*cli, "up", "--detach", "--gateways", "0", "--state-dir", str(state_dir)],
            env=env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        try:
            state = json.loads((state_dir / "stack.json").read_text())
            figures = run_flood(
                state,
                BIN,
                new_messages=args.new_messages,
                invalid_messages=args.invalid_messages,
                per=args.per,
                timeout_s=args.timeout,
                echo=lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr),
            )
        finally:
            subprocess.run(
                [*cli, "down", "--state-dir", str(state_dir)],
                env=env, check=False, capture_output=True, timeout=120,
            )  # fmt: skip
    figures["code"] = str(args.code or "this checkout")
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    n, per = args.invalid_messages, args.per
    print(f"code: {figures['code']}")
    print(f"{args.new_messages} x {per} new charger ids published in "
          f"{figures['new_chargers_publish_s']} s")  # fmt: skip
    print(f"{n} x {per} invalid readings: published in {figures['invalid_publish_s']} s, "
          f"all dead-lettered after {figures['invalid_handled_s']} s "
          f"({figures['deadletter_readings']} of {n * per} readings on the feed)")  # fmt: skip
    print(f"  per message: {figures['deadletter_publishes_per_message']} dead-letter publishes, "
          f"{figures['deadletter_points_per_message']} stored points, "
          f"{figures['write_requests_per_message']} InfluxDB writes (all gateways)")  # fmt: skip
    print(f"  WARNING lines about it: {figures['warning_lines']}")
    print(f"calm gateway: latest at most {figures['calm_latest_max_age_s']:.1f} s old "
          f"(worst {figures['calm_latest_worst']}); its new charger accepted after "
          f"{figures['new_charger_accepted_after_s']} s")  # fmt: skip
    print(f"  by phase: {figures['calm_latest_max_age_by_phase_s']} s "
          f"(new chargers handled after {figures['new_chargers_handled_s']} s)")  # fmt: skip
    print(f"  its newest stored reading at most {figures['calm_stored_max_age_s']:.1f} s old")
    print(f"scenario: {figures['total_s']} s")


if __name__ == "__main__":
    main()
