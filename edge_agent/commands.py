"""Commands from the cloud on ``{root}/{gateway}/cmd/{name}`` (MQTT 5 request/response).

The requester sets the Response Topic and (optionally) Correlation Data; the answer goes there
with the same correlation data, as JSON: ``{"ok": true, "command": NAME, ...}`` or
``{"ok": false, "command": NAME, "error": CODE, "detail": TEXT}``. The response topic must be
under the gateway's own ``{root}/{gateway}/reply/`` (the only place the broker ACL lets it
write): a command naming any other response topic is refused and not executed. A command
without a response topic is executed and not answered.

| command | payload | answer |
|---|---|---|
| ``ping`` | none | ``gateway_id``, ``ts``, ``uptime_s`` |
| ``set-interval`` | ``{"interval_s": S}`` (0.01..3600) | ``interval_s``, ``previous_s`` (sim) |
| ``flush`` | ``{"timeout_s": T}`` (default 10, at most 60) | ``flushed``, ``pending`` |
| ``outbox-stats`` | none | ``stats`` (as ``edge-agent outbox stats --json``) |
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from edge_agent.outbox import Outbox
from edge_agent.publisher import Counters, Publisher
from edge_agent.simulator import Pace
from telemetry_common.errors import TopicError
from telemetry_common.mqtt import AsyncMqttClient, MqttError, Received
from telemetry_common.schema import format_ts
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)

MAX_CONCURRENT: Final = 8
#: Commands waiting for a slot at most; beyond, a command is refused (counted).
MAX_WAITING: Final = 64
FLUSH_MAX_S: Final = 60.0
REPLY_TIMEOUT_S: Final = 10.0


class CommandError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Commands:
    def __init__(
        self,
        gateway_id: str,
        topics: Topics,
        outbox: Outbox,
        client: AsyncMqttClient,
        publisher: Publisher,
        counters: Counters,
        pace: Pace | None = None,
    ) -> None:
        self._gw = gateway_id
        self._topics = topics
        self._outbox = outbox
        self._client = client
        self._publisher = publisher
        self._counters = counters
        self._pace = pace
        self._started = time.monotonic()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, msg: Received) -> None:
        """Run the command ``msg`` in the background (it waits for a slot there while
        MAX_CONCURRENT run, so a slow command never holds up the stored acknowledgements that
        arrive on the same connection)."""
        if len(self._running) >= MAX_WAITING:
            self._counters.commands_refused += 1
            log.warning(
                "command on %s refused: %d commands already waiting", msg.topic, MAX_WAITING
            )
            return
        task = asyncio.create_task(self._handle_in_slot(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _handle_in_slot(self, msg: Received) -> None:
        await self._slots.acquire()
        await self._handle(msg)

    def cancel(self) -> None:
        """Cancel the commands still running."""
        for task in list(self._running):
            task.cancel()

    async def _handle(self, msg: Received) -> None:
        try:
            try:
                name = self._topics.command_name(self._gw, msg.topic)
            except (TopicError, ValueError):
                log.warning("ignored a message on %s: not a command topic", msg.topic)
                return
            reply_to = msg.response_topic
            if reply_to is not None and not self._topics.is_reply_topic(self._gw, reply_to):
                self._counters.commands_refused += 1
                log.warning(
                    "command %s refused: response topic %r is outside %s",
                    name,
                    reply_to,
                    self._topics.reply_prefix(self._gw),
                )
                return
            self._counters.commands += 1
            answer = await self.execute(name, msg.payload)
            log.info("command %s: %s", name, "ok" if answer["ok"] else answer.get("error"))
            if reply_to is not None:
                await self._reply(reply_to, answer, msg.correlation_data)
        finally:
            self._slots.release()

    async def _reply(self, topic: str, answer: dict[str, Any], correlation: bytes | None) -> None:
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                await self._client.publish(
                    topic, orjson.dumps(answer), correlation_data=correlation
                )
        except (MqttError, TimeoutError) as exc:
            log.warning("could not answer on %s: %s", topic, exc)

    async def execute(self, name: str, payload: bytes) -> dict[str, Any]:
        """Run one command; the answer document (never raises for a bad request)."""
        try:
            body = await self._dispatch(name, payload)
        except CommandError as exc:
            return {"ok": False, "command": name, "error": exc.code, "detail": exc.detail}
        return {"ok": True, "command": name, **body}

    async def _dispatch(self, name: str, payload: bytes) -> dict[str, Any]:
        try:
            args = orjson.loads(payload) if payload.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise CommandError("bad_request", f"not JSON: {exc}") from exc
        if not isinstance(args, dict):
            raise CommandError("bad_request", "the payload must be a JSON object")
        handler = {
            "ping": self._ping,
            "set-interval": self._set_interval,
            "flush": self._flush,
            "outbox-stats": self._stats,
        }.get(name)
        if handler is None:
            raise CommandError("unknown_command", f"no command {name!r}")
        return await handler(args)

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "gateway_id": self._gw,
            "ts": format_ts(datetime.now(UTC)),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "connected": self._client.connected,
        }

    async def _set_interval(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._pace is None:
            raise CommandError("not_supported", "this source has no sampling interval")
        value = args.get("interval_s")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandError("bad_request", "interval_s must be a number")
        if not 0.01 <= value <= 3600:
            raise CommandError("bad_request", "interval_s must be within 0.01..3600")
        previous = self._pace.interval_s
        self._pace.set(float(value))
        return {"interval_s": float(value), "previous_s": previous}

    async def _flush(self, args: dict[str, Any]) -> dict[str, Any]:
        timeout = args.get("timeout_s", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise CommandError("bad_request", "timeout_s must be a number >= 0")
        self._publisher.flush()
        deadline = time.monotonic() + min(float(timeout), FLUSH_MAX_S)
        pending = await asyncio.to_thread(self._outbox.pending)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            pending = await asyncio.to_thread(self._outbox.pending)
        return {"flushed": pending == 0, "pending": pending}

    async def _stats(self, args: dict[str, Any]) -> dict[str, Any]:
        stats = await asyncio.to_thread(self._outbox.stats)
        return {"stats": dataclasses.asdict(stats)}
