"""``telemetry-stack deadletters replay`` on a fake API: when a replay counts as done (each dead
letter's replayed_at changed, whatever the bridge's clock says) and replay by filter going on
while more match."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from telemetry_stack import deadletters_cli
from telemetry_stack.deadletters_cli import deadletters_app

API = ["--api-url", "http://api.test", "--api-key", "admin-key-0123456"]


class FakeApi:
    """Dead letters by id; a replay takes up to ``limit`` not stored (newest first) and the
    "bridge" stores them at once, stamping replayed_at with a clock far behind the API's."""

    def __init__(self, n: int, outcome: str = "stored") -> None:
        self.items = {
            f"id{i}": {"id": f"id{i}", "replayed_at": None, "replay_outcome": None}
            for i in range(n)
        }
        self.outcome = outcome
        self.posts: list[dict[str, Any]] = []

    def __call__(self, api: Any, method: str, path: str, **kwargs: Any) -> Any:
        if method == "GET":
            return self.items[path.rsplit("/", 1)[1]]
        body = kwargs["json"]
        self.posts.append(body)
        if "ids" in body:
            chosen = body["ids"]
            more = False
        else:
            pending = [i for i, d in self.items.items() if d["replay_outcome"] != "stored"]
            chosen, more = pending[: body["limit"]], len(pending) > body["limit"]
        before = {i: self.items[i]["replayed_at"] for i in chosen}
        at = f"2026-12-04T10:00:{len(self.posts):02d}.000Z"
        for i in chosen:  # the bridge's clock is a day behind the API's requested_at
            self.items[i] |= {"replayed_at": at, "replay_outcome": self.outcome}
        return {
            "accepted": chosen,
            "refused": [],
            "requested_at": "2026-12-05T10:00:00.000Z",
            "more": more,
            "previous_replayed_at": before,
        }


def test_a_replay_is_done_when_replayed_at_changed_even_with_a_bridge_clock_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """replayed_at older than the API's requested_at (a bridge clock behind) still counts:
    exit 0 at once, not 3 after --timeout."""
    fake = FakeApi(2)
    monkeypatch.setattr(deadletters_cli, "call", fake)
    result = CliRunner().invoke(
        deadletters_app, ["replay", "--id", "id0", "--id", "id1", "--timeout", "1", *API]
    )
    assert result.exit_code == 0, result.output
    assert "2 stored" in result.output


def test_replay_by_filter_goes_on_while_more_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """By filter with --limit 2 over 5 dead letters: three requests, all 5 stored, exit 0."""
    fake = FakeApi(5)
    monkeypatch.setattr(deadletters_cli, "call", fake)
    result = CliRunner().invoke(
        deadletters_app,
        ["replay", "--reason", "charger_not_bound", "--limit", "2", "--timeout", "1", *API],
    )
    assert result.exit_code == 0, result.output
    assert len(fake.posts) == 3
    assert all(d["replay_outcome"] == "stored" for d in fake.items.values())
    assert "5 stored" in result.output


def test_replay_by_filter_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """--rounds bounds the requests (exit 1: more match); ones dead-lettered again each time
    stop the loop instead of being replayed over and over."""
    fake = FakeApi(5)
    monkeypatch.setattr(deadletters_cli, "call", fake)
    args = ["replay", "--reason", "r", "--limit", "2", "--rounds", "2", "--timeout", "1", *API]
    result = CliRunner().invoke(deadletters_app, args)
    assert result.exit_code == 1, result.output
    assert len(fake.posts) == 2
    assert "--rounds 2" in result.output
    again = FakeApi(5, outcome="deadlettered:charger_not_bound")
    monkeypatch.setattr(deadletters_cli, "call", again)
    result = CliRunner().invoke(
        deadletters_app, ["replay", "--reason", "r", "--limit", "2", "--timeout", "1", *API]
    )
    assert result.exit_code == 1, result.output
    assert len(again.posts) == 2
    assert "already tried" in result.output
