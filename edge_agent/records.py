"""What the outbox hands out: rows to publish and its statistics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    body: bytes
    captured_at: float = 0.0

    def reading_json(self) -> bytes:
        """The reading as sent: the stored body with ``seq`` spliced in first."""
        return b'{"seq":%d,%s' % (self.seq, self.body[1:])


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    pending_bytes: int
    parked: int
    oldest_seq: int | None
    newest_seq: int | None
    oldest_age_s: float | None
    last_seq_assigned: int
    dropped: dict[str, int] = field(default_factory=dict)
    #: Dropped by the budget while their batch awaits its PUBACK: counted only if it fails.
    dropped_in_flight: int = 0
    #: Runs of dropped seqs listed (``outbox dropped``), and dropped readings no longer listed.
    dropped_runs: int = 0
    dropped_unlisted: int = 0
    newest_dropped: tuple[int, int] | None = None
    max_rows: int = 0
    max_bytes: int = 0
    file_bytes: int = 0
    disk_full: bool = False
