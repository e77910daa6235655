"""A local-mode OCPP session (1.6 ``ChargerSession`` or 2.0.1 ``ChargerSession201``) driven
through the library's router without a socket: what it sends is recorded, what it stores is
kept (each capture checked to make a valid reading body)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from edge_agent.capture import Capture
from edge_agent.ocpp.session import ChargerSession, Counters, SessionBase, Shared
from edge_agent.ocpp.settings import OcppSettings
from edge_agent.ocpp.transactions import TransactionStore
from edge_agent.ocpp.translate import Translator


class Wire:
    """Stands in for the WebSocket: records what the session sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, message: str) -> None:
        self.sent.append(orjson.loads(message))


class SessionHarness:
    def __init__(
        self,
        tmp_path: Path,
        salt: bytes,
        *,
        session: type[SessionBase] = ChargerSession,
        charger_id: str = "CP-9",
    ) -> None:
        self.stored: list[Capture] = []
        self.wire = Wire()
        shared = Shared(
            OcppSettings(state_path=tmp_path / "s.json"),
            Translator(),
            TransactionStore(tmp_path / "s.json"),
            Counters(),
            self._emit,
            salt,
        )
        self.session = session(charger_id, self.wire, shared)

    async def _emit(self, captures: list[Capture]) -> None:
        for c in captures:
            c.to_body()
        self.stored += captures

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        """Send the session a CALL; its one answer (CALLRESULT or CALLERROR), parsed."""
        n = len(self.wire.sent)
        await self.session.route_message(orjson.dumps([2, f"u{n}", action, payload]))
        [answer] = self.wire.sent[n:]
        return answer
