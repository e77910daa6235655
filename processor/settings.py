"""The processor's settings: a part of ``BridgeSettings`` (one process, ``TELEMETRY_BRIDGE_``
variables), defined here beside the code that reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from processor.limits import LimitSettings


class ProcessorSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    write_max_lines: int = Field(default=10_000, ge=1, le=100_000)
    """Lines per InfluxDB write request (a batch is written in requests of this size); the default
    takes a whole batch (BATCH_MAX_BYTES of ~280-byte readings) in one request: fewer, larger
    writes cost InfluxDB less per point."""
    write_concurrency: int = Field(default=2, ge=1, le=16)
    """InfluxDB write requests in flight at once (the requests of one batch go concurrently)."""
    max_future_s: float = Field(default=300.0, ge=0)
    """Readings stamped further ahead than this are dead-lettered (a clock fault at the edge)."""
    max_age_days: float | None = Field(default=None, gt=0)
    """Readings stamped further back than this are dead-lettered (``ts_too_old``): a gateway
    clock reset to 1970 or 2000 would otherwise be stored decades back (a new InfluxDB shard per
    week it touches) and never become the latest value. Unset (the default): the raw
    retention, the duration of retention policy ``autogen`` as InfluxDB reports it (the rollup
    job sets it to its ``RAW_RETENTION``, 30d), read at start and every HORIZON_REFRESH_S: an
    older reading would be refused by InfluxDB or dropped with its shard soon after. Set: this,
    whatever the retention."""
    max_age_fallback_days: float = Field(default=366.0, gt=0)
    """The horizon while ``autogen`` keeps readings forever (``INF``: before the rollup job's
    first complete pass, or without the job) or its duration cannot be read (MAX_AGE_DAYS
    unset): a year, well beyond the backlog an edge outbox holds."""
    horizon_refresh_s: float = Field(default=300.0, gt=0, le=86_400)
    """How often ``autogen``'s duration is read again (MAX_AGE_DAYS unset): a retention changed
    by the rollup job or an operator moves the horizon within this long."""
    max_backoff_s: float = Field(default=30.0, gt=0)
    """Cap of the backoff between InfluxDB retries."""
    live_interval_s: float = Field(default=1.0, ge=0)
    """At most one live publish per charger per this many seconds (newer values wait)."""
    live_max_rate: float = Field(default=500.0, ge=0)
    """At most this many live publishes per second in all (0: no limit); the chargers published
    longest ago go first, so a large fleet refreshes less often instead of costing more."""
    live_busy_rate: float = Field(default=50.0, ge=0)
    """... and at most this many while ingestion is behind (messages wait beyond the batches in
    hand; 0: none then): a live publish costs ~250 us of CPU that storing needs more."""
    stored_acks: bool = True
    """Tell each gateway which of its seqs are stored (``{root}/{gateway}/stored``), so it forgets
    a reading only then (docs/design.md, "Stored acknowledgements"). Off only for gateways that
    still delete on the broker's PUBACK (``TELEMETRY_EDGE_DELETE_AFTER=puback``)."""
    ack_interval_s: float = Field(default=0.5, gt=0, le=10)
    """Stored acknowledgements are coalesced per gateway and sent at most this often: one message
    covers every seq of the gateway handled since the last one."""
    ack_eager_readings: int = Field(default=1_000, ge=0)
    """A gateway with this many seqs waiting is acknowledged right after the commit, without
    waiting for ``ACK_INTERVAL_S`` (0: never): a gateway draining a backlog would otherwise be
    held to its window (``TELEMETRY_EDGE_MAX_UNCONFIRMED``) per interval."""
    ack_max_rate: float = Field(default=2_000.0, ge=0)
    """At most this many stored acknowledgements per second in all (0: no limit), the gateways
    waiting longest first: a fleet larger than this times ``ACK_INTERVAL_S`` is acknowledged
    less often, not at more cost (keep gateways / this well below the edge's
    ``STORED_TIMEOUT_S``)."""
    bindings: Literal["provisioned", "first-come"] = "provisioned"
    """``provisioned``: only chargers bound by BINDINGS_FILE or the bindings store (the API's
    ``PUT /v1/bindings/{charger_id}``; the store overrides the file for a charger it names) are
    accepted, any other charger's readings are dead-lettered ``charger_not_bound``.
    ``first-come`` (development only; the bridge warns): a charger bound nowhere is bound to the
    first gateway that sends for it (remembered through InfluxDB)."""
    bindings_file: Path | None = None
    """JSON object {"charger_id": "gateway_id"}: bindings provisioned from a file (read at start;
    the bindings store overrides it for the chargers the store names)."""
    bindings_refresh_s: float = Field(default=5.0, gt=0, le=3600)
    """How often the bindings store is read again (only the changes since the last read, less a
    one-minute margin for clocks): a binding changed through the API reaches every bridge within
    this long."""
    max_seq_jump: int = Field(default=10**12, ge=1)
    """A reading whose seq lies more than this above the highest seq known of its gateway and
    epoch (0 for an epoch not seen yet) is dead-lettered (``seq_out_of_range``, as is any seq
    above 2^53-1): one absurd seq would otherwise blind gap tracking of that epoch for good
    (every later seq would look like a late one). 10^12 is 30 years of 1,000 readings/s, far
    beyond any outage an outbox's budget drops."""
    warmup_budget_s: float = Field(default=20.0, gt=0)
    """At start, the warm-up (the newest-stored state, a recent window of readings, the bindings
    store) is given this long, InfluxDB retries included; then the bridge consumes anyway and
    the warm-up goes on in the background (docs/bridge.md#warm-up)."""
    warmup_window_s: float = Field(default=3600.0, gt=0)
    """The warm-up also reads the readings of this last window (what another bridge stored but
    whose newest-stored state point was not written yet, and every recent charger of a database
    written by a version without that state)."""
    gap_grace_s: float = Field(default=30.0, gt=0)
    """A suspected seq gap is checked against InfluxDB after this long (other bridges of the share
    group may have stored the readings), and again at this interval while open."""
    limit_chargers_per_gateway: int = Field(default=1_000, ge=0)
    """A gateway may send for at most this many distinct chargers (0: no limit); the readings of
    any further charger are dead-lettered ``limit_exceeded`` (docs/design.md, "Per-gateway
    limits"). A gateway serves one site: the largest depots and garages hold a few hundred
    charge points, while 1,000 gateways each allowed 1,000 chargers already reach InfluxDB's
    default ``max-series-per-database`` (1,000,000) at one EVSE/connector each."""
    limit_new_chargers_per_hour: int = Field(default=200, ge=0)
    """A gateway may add at most this many chargers it never sent for in any hour (0: no
    limit; sliding window); a charger bound to the gateway (bindings file or store) is never new.
    Installing a site adds tens of chargers; a gateway inventing thousands of ids (a bug, an
    attack) is held to this pace, so the series count grows slowly enough to be noticed."""
    limit_value_keys_per_charger: int = Field(default=256, ge=0)
    """A charger may use at most this many distinct value keys (0: no limit); a reading that
    would add more is dead-lettered. A reading may carry 64 freely named keys and the OCPP
    source turns unknown measurands into keys: a real meter reports a few dozen (each OCPP
    measurand per phase and location), so 256 leaves room for any real one. Counted per bridge
    since its start (InfluxDB keeps field keys per measurement, not per charger)."""
    limit_evse_id: int = Field(default=16, ge=0, le=255)
    """Readings with a higher ``evse_id`` are dead-lettered (each EVSE/connector pair is a series
    of its own). Real chargers have one to a few EVSEs; 16 covers the largest dispensers."""
    limit_connector_id: int = Field(default=16, ge=0, le=255)
    """Readings with a higher ``connector_id`` are dead-lettered. OCPP 1.6 numbers a charger's
    connectors 1..n (0: the charger as a whole): a handful on real chargers, up to 16 on a power
    cabinet with satellite dispensers."""

    def limit_settings(self) -> LimitSettings:
        """The per-gateway limits of these settings (:mod:`processor.limits`)."""
        return LimitSettings(
            chargers_per_gateway=self.limit_chargers_per_gateway,
            new_chargers_per_hour=self.limit_new_chargers_per_hour,
            value_keys_per_charger=self.limit_value_keys_per_charger,
            evse_id=self.limit_evse_id,
            connector_id=self.limit_connector_id,
        )
