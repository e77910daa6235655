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
    max_rows: int = 0
    max_bytes: int = 0
    file_bytes: int = 0
    disk_full: bool = False
