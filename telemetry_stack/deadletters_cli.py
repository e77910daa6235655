"""``telemetry-stack deadletters list|replay``: the stored dead letters through the API (admin
key), and their replay once the cause is fixed (docs/query-api.md#dead-letters).

The API is the one of ``stack.json`` (``--state-dir``, with its admin key), or ``--api-url`` and
``--api-key`` (env ``TELEMETRY_API_URL``, ``TELEMETRY_API_KEY``). ``replay`` waits, up to
``--timeout``, until every replayed dead letter has an outcome written by a bridge (its
``replayed_at`` changed from the value it had before the replay), then prints a summary; by
filter it sends the request again while more match (the stored ones are skipped), at most
``--rounds`` times.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from telemetry_common.errors import TelemetryError
from telemetry_stack.state import load_state

deadletters_app = typer.Typer(
    help="List the stored dead letters and replay them through the API (admin key).",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="The stack's state (stack.json: API URL, admin key).")
]
ApiUrl = Annotated[
    str | None,
    typer.Option("--api-url", envvar="TELEMETRY_API_URL", help="The API (default: stack.json)."),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="TELEMETRY_API_KEY", help="An admin key (default: stack.json's)."
    ),
]
Reason = Annotated[str | None, typer.Option("--reason", help="Only this reason.")]
Gateway = Annotated[str | None, typer.Option("--gateway", help="Only this gateway's.")]
Since = Annotated[
    str | None,
    typer.Option("--since", help="From (RFC 3339 or relative, e.g. -1d; default 30 days back)."),
]
Until = Annotated[str | None, typer.Option("--until", help="Up to (default now).")]
DEFAULT_STATE = Path(".stack")
PAGE_MAX = 500


class CliError(TelemetryError):
    """What the command could not do, and what to do about it."""


@dataclass(frozen=True)
class Api:
    url: str
    key: str


def resolve_api(state_dir: Path, url: str | None, key: str | None) -> Api:
    """The API and admin key to use: the options, else stack.json's."""
    if url and key:
        return Api(url.rstrip("/"), key)
    try:
        state = load_state(state_dir)
    except (TelemetryError, OSError, ValueError) as exc:
        raise CliError(
            f"{exc}; or pass --api-url and --api-key (env TELEMETRY_API_URL, TELEMETRY_API_KEY)"
        ) from exc
    try:
        return Api(
            (url or str(state["api"]["url"])).rstrip("/"), key or str(state["api"]["keys"]["admin"])
        )
    except (KeyError, TypeError) as exc:
        raise CliError(f"{state_dir}/stack.json names no API or admin key ({exc})") from exc


def call(api: Api, method: str, path: str, **kwargs: Any) -> Any:
    """One request; the answer's JSON, or a :class:`CliError` that says what to do."""
    try:
        resp = httpx.request(
            method, f"{api.url}{path}", headers={"X-API-Key": api.key}, timeout=30, **kwargs
        )
    except httpx.HTTPError as exc:
        raise CliError(
            f"the API at {api.url} does not answer ({type(exc).__name__}: {exc}): is it running? "
            "(`telemetry-stack status`)"
        ) from exc
    if resp.status_code == 401:
        raise CliError(
            f"the API at {api.url} refused the key (401): pass an admin key with --api-key "
            "(TELEMETRY_API_KEY), or leave it out to use stack.json's"
        )
    if resp.status_code == 403:
        raise CliError("this key may not read or replay dead letters (403): use an admin key")
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise CliError(f"{method} {path}: {resp.status_code} {detail}")
    return resp.json()


def list_items(
    api: Api,
    *,
    reason: str | None,
    gateway: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` dead letters, newest first (following the API's cursor)."""
    params: dict[str, Any] = {
        k: v
        for k, v in {"reason": reason, "gateway_id": gateway, "start": since, "end": until}.items()
        if v is not None
    }
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(items) < limit:
        page = call(
            api,
            "GET",
            "/v1/deadletters",
            params={**params, "limit": min(PAGE_MAX, limit - len(items))}
            | ({"cursor": cursor} if cursor else {}),
        )
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return items


def _row(item: dict[str, Any]) -> str:
    outcome = item.get("replay_outcome") or "-"
    # readings: "-" a whole message, "#3" one reading (records written before they were one per
    # message), "x1000" a message's refused readings (their reasons follow the detail)
    if item.get("count") is not None:
        index = f"x{item['count']}"
    else:
        index = "-" if item.get("index") is None else f"#{item['index']}"
    size = f"{item.get('payload_bytes')}B" + ("(cut)" if item.get("payload_truncated") else "")
    detail = (item.get("detail") or "")[:60]
    reasons = item.get("reasons")
    why = (
        "" if not reasons else "\n    reasons " + ", ".join(f"{r} {n}" for r, n in reasons.items())
    )
    return (
        f"{item['received_at']}  {item['reason']:<18} {item['gateway_id']:<16} {index:>6} "
        f"{size:>9}  {outcome:<30} {detail}\n    id {item['id']}{why}"
    )


@deadletters_app.command("list")
def list_cmd(
    reason: Reason = None,
    gateway: Gateway = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one array).")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """The stored dead letters, newest first."""
    try:
        api = resolve_api(state_dir, api_url, api_key)
        items = list_items(
            api, reason=reason, gateway=gateway, since=since, until=until, limit=limit
        )
    except CliError as exc:
        typer.echo(f"telemetry-stack deadletters: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        typer.echo("no dead letters")
        return
    typer.echo("received_at               reason             gateway          index     bytes  "
               "replay_outcome                 detail")  # fmt: skip
    for item in items:
        typer.echo(_row(item))


def wait_outcomes(
    api: Api, previous: dict[str, str | None], timeout_s: float, poll_s: float = 0.5
) -> dict[str, str | None]:
    """Each id's ``replay_outcome`` once its ``replayed_at`` differs from ``previous[id]`` (its
    value before the replay, as the API's answer gives it; None: none within ``timeout_s``),
    printing progress as outcomes come in. ``replayed_at`` is stamped by a bridge's clock and is
    only compared with itself, never with the API's or this host's clock."""
    ids = list(previous)
    outcomes: dict[str, str | None] = dict.fromkeys(ids)
    pending = list(ids)
    deadline = time.monotonic() + timeout_s
    shown = -1
    while pending:
        still = []
        for item_id in pending:
            item = call(api, "GET", f"/v1/deadletters/{item_id}")
            at = item.get("replayed_at")
            if at is not None and at != previous[item_id] and item.get("replay_outcome"):
                outcomes[item_id] = str(item["replay_outcome"])
            else:
                still.append(item_id)
        pending = still
        done = len(ids) - len(pending)
        if done != shown:
            typer.echo(f"  {done}/{len(ids)} with an outcome", err=True)
            shown = done
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return outcomes


def replay_round(
    api: Api, body: dict[str, Any], timeout_s: float
) -> tuple[dict[str, str | None], list[dict[str, str]], bool]:
    """One replay request and the wait for its outcomes: (outcome per accepted id, refused,
    whether more dead letters matched the filter)."""
    answer = call(api, "POST", "/v1/deadletters/replay", json=body)
    accepted: list[str] = answer["accepted"]
    refused: list[dict[str, str]] = answer["refused"]
    before: dict[str, str | None] = answer.get("previous_replayed_at") or {}
    typer.echo(f"replaying {len(accepted)} dead letters ({len(refused)} refused)", err=True)
    for r in refused:
        typer.echo(f"  refused {r['id']}: {r['reason']}", err=True)
    outcomes = wait_outcomes(api, {i: before.get(i) for i in accepted}, timeout_s)
    return outcomes, refused, bool(answer.get("more"))


@deadletters_app.command("replay")
def replay_cmd(
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="A dead letter's id (repeat for more).")
    ] = None,
    reason: Reason = None,
    gateway: Gateway = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many per request.")
    ] = 1000,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds", min=1, help="By filter: at most this many requests while more match."
        ),
    ] = 100,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0, help="Seconds to wait for the outcomes of a request."),
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Feed dead letters through the pipeline again, by --id or by filter (--reason and/or
    --gateway), and wait for their outcome. By filter, the ones a replay has stored are skipped,
    and requests of up to --limit follow one another while more match (at most --rounds).
    Exit 0: every one stored; 1: some refused or dead-lettered again, or more matched than
    --rounds took; 3: outcomes missing after --timeout; 2: the request failed."""
    if bool(ids) == bool(reason or gateway):
        typer.echo(
            "telemetry-stack deadletters: give --id (repeatable) or a filter "
            "(--reason and/or --gateway), not both",
            err=True,
        )
        raise typer.Exit(2)
    body: dict[str, Any]
    if ids:
        body = {"ids": ids}
    else:
        f = {"reason": reason, "gateway_id": gateway, "start": since, "end": until}
        body = {"filter": {k: v for k, v in f.items() if v is not None}, "limit": limit}
    outcomes: dict[str, str | None] = {}
    refused_by_id: dict[str, dict[str, str]] = {}
    left_over = False
    try:
        api = resolve_api(state_dir, api_url, api_key)
        for n in range(1, rounds + 1):
            got, refused, more = replay_round(api, body, timeout)
            new = (set(got) | {r["id"] for r in refused}) - set(outcomes) - set(refused_by_id)
            outcomes.update(got)
            refused_by_id.update({r["id"]: r for r in refused})
            if ids or not more:
                break
            if not new:  # the same ones again (refused or dead-lettered again each time)
                typer.echo("more match, but only ones already tried: stopping", err=True)
                left_over = True
                break
            if any(o is None for o in got.values()):
                typer.echo("outcomes missing after --timeout: not going on", err=True)
                left_over = True
                break
            if n == rounds:
                typer.echo(f"more match after --rounds {rounds}: run it again", err=True)
                left_over = True
                break
            typer.echo(f"request {n}: {len(outcomes)} replayed so far; more match", err=True)
    except CliError as exc:
        typer.echo(f"telemetry-stack deadletters: {exc}", err=True)
        raise typer.Exit(2) from exc
    refused = [r for i, r in refused_by_id.items() if outcomes.get(i) != "stored"]
    counts = Counter(o or "no outcome yet" for o in outcomes.values())
    if as_json:
        typer.echo(
            json.dumps({"outcomes": outcomes, "refused": refused, "more": left_over}, indent=2)
        )
    else:
        summary = ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) or "nothing replayed"
        typer.echo(f"replayed: {summary}; refused: {len(refused)}")
        for item_id, outcome in outcomes.items():
            if outcome != "stored":
                typer.echo(f"  {item_id}: {outcome or 'no outcome within the timeout'}")
    if any(o is None for o in outcomes.values()):
        raise typer.Exit(3)
    if refused or left_over or any(o != "stored" for o in outcomes.values()):
        raise typer.Exit(1)
