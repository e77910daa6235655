"""The processor's state: what must never go backwards and must survive restarts.

- :mod:`.lvc`: the last-value cache (each charger's newest stored reading);
- :mod:`.bindings`: which gateway may send for a charger;
- :mod:`.gaps`: each gateway's seq gaps, suspected and confirmed;
- :class:`processor.limits.GatewayLimits`: each gateway's chargers and each charger's value
  keys, for the per-gateway limits (seeded from the last-value cache after warm-up);
- :mod:`.storage`: their I/O against InfluxDB (warm-up at start, gap confirmation): what is
  stored is the record, so none of this state is lost with the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processor.limits import GatewayLimits, LimitSettings
from processor.metrics import Metrics
from processor.state.bindings import Bindings
from processor.state.gaps import GapTracker
from processor.state.lvc import LastValueCache


@dataclass(slots=True)
class State:
    bindings: Bindings = field(default_factory=Bindings)
    lvc: LastValueCache = field(default_factory=LastValueCache)
    gaps: GapTracker = field(default_factory=GapTracker)
    limits: GatewayLimits = field(default_factory=lambda: GatewayLimits(LimitSettings()))

    def status(self) -> dict[str, object]:
        """The state's part of the bridge's ``/status`` document."""
        return {
            "bindings": len(self.bindings),
            "bindings_provisioned": self.bindings.provisioned,
            "bindings_store": self.bindings.status(),
            "seq_gaps": self.gaps.report(),
            "limits": self.limits.status(),
        }

    def watch(self, metrics: Metrics) -> None:
        """Expose the state's sizes as gauges (read when scraped)."""
        metrics.lvc_chargers.set_function(lambda: float(len(self.lvc)))
        metrics.bindings.set_function(lambda: float(len(self.bindings)))
        metrics.bindings_refreshed.set_function(lambda: self.bindings.refreshed_at or 0.0)
        metrics.seq_missing.set_function(lambda: float(self.gaps.missing()))
        metrics.seq_gaps.set_function(lambda: float(self.gaps.open_gaps()))
