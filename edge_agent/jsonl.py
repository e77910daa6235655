"""The ``jsonl`` source: one reading per line of JSON, from a file or stdin.

A line is ``{"charger_id", "ts", "values", ["status", "evse_id", "connector_id",
"transaction_id", "tx_event", "stop_reason", "id_tag_hash", "charger_info"]}``: the optional keys
are the reading's own (docs/design.md#readingbatch), passed through and checked by the shared
schema (``id_tag_hash`` is already a hash: this source never sees a tag). Values given in kWh or
kW (``energy_kwh``, ``power_kw``, or any ``*_kwh`` / ``*_kw`` key) are converted to Wh and W
here, at the edge. A line that is not a valid reading is reported with its line number and
skipped; the lines around it are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import IO

import orjson
from pydantic import ValidationError

from edge_agent.capture import Capture

log = logging.getLogger(__name__)


def normalise_units(values: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if key.endswith("_kwh"):
            out[key[: -len("_kwh")] + "_wh"] = value * 1000.0
        elif key.endswith("_kw"):
            out[key[: -len("_kw")] + "_w"] = value * 1000.0
        else:
            out[key] = value
    return out


class LineError(ValueError):
    def __init__(self, lineno: int, problem: str) -> None:
        super().__init__(f"line {lineno}: {problem}")
        self.lineno = lineno
        self.problem = problem


def parse_line(line: bytes, lineno: int) -> Capture:
    """One JSON line -> a validated capture; raises LineError with the reason."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LineError(lineno, f"not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise LineError(lineno, "not a JSON object")
    try:
        ts = datetime.fromisoformat(str(obj["ts"]))
        values = obj["values"]
        if not isinstance(values, dict):
            raise LineError(lineno, "'values' must be an object")
        capture = Capture(
            charger_id=obj["charger_id"],
            ts=ts,
            values=normalise_units(values),
            status=obj.get("status"),
            evse_id=obj.get("evse_id", 1),
            connector_id=obj.get("connector_id", 1),
            transaction_id=obj.get("transaction_id"),
            tx_event=obj.get("tx_event"),
            stop_reason=obj.get("stop_reason"),
            id_tag_hash=obj.get("id_tag_hash"),
            charger_info=obj.get("charger_info"),
        )
        capture.to_body()
    except KeyError as exc:
        raise LineError(lineno, f"missing {exc.args[0]!r}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise LineError(lineno, problems) from exc
    except (TypeError, ValueError) as exc:
        raise LineError(lineno, str(exc)) from exc
    return capture


async def read_jsonl(stream: IO[bytes], *, max_batch: int = 500) -> AsyncIterator[list[Capture]]:
    """Yield captures as lines arrive (what is already there in one batch); stop at end of input."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=10 * max_batch)

    def pump() -> None:  # a thread: blocking reads never stall the event loop
        for line in iter(stream.readline, b""):
            asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()
        asyncio.run_coroutine_threadsafe(lines.put(None), loop).result()

    reader = loop.run_in_executor(None, pump)
    lineno = 0
    done = False
    while not done:
        raw = [await lines.get()]
        while len(raw) < max_batch and not lines.empty():
            raw.append(lines.get_nowait())
        batch: list[Capture] = []
        for line in raw:
            if line is None:
                done = True
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                batch.append(parse_line(line, lineno))
            except LineError as exc:
                log.error("jsonl: skipped %s", exc, extra={"line_no": exc.lineno})
        if batch:
            yield batch
    await reader
