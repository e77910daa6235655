"""Public names: the bridges' secret-bearing client id and share group never show as they are."""

from __future__ import annotations

import secrets

import pytest

from telemetry_common.redact import digest, public_name, redact

TOKEN = secrets.token_hex(16)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (f"telemetry-bridge-1-{TOKEN}", f"telemetry-bridge-1~{digest(TOKEN)}"),
        (f"telemetry-bridge-12-{TOKEN}", f"telemetry-bridge-12~{digest(TOKEN)}"),
        (f"processors-{TOKEN}", f"processors~{digest(TOKEN)}"),
        # compose's dev placeholder has dashes of its own
        ("telemetry-bridge-1-dev-bridge-secret-change-me", "telemetry-bridge-1~"),
        # the documented defaults are no secret (the bridge warns about them)
        ("telemetry-bridge-1", "telemetry-bridge-1"),
        ("processors", "processors"),
        # any other shape: only its digest
        (f"my-bridge-{TOKEN}", f"~{digest(f'my-bridge-{TOKEN}')}"),
        ("bridge-a1b2c3d4", f"~{digest('bridge-a1b2c3d4')}"),
    ],
)
def test_public_name_keeps_the_documented_stem_only(name: str, shown: str) -> None:
    public = public_name(name)
    assert public.startswith(shown)
    assert TOKEN not in public
    assert "secret-change-me" not in public
    assert public_name(public) == public  # idempotent: a public name is shown as it is


def test_digest_is_short_and_one_way() -> None:
    tag = digest(TOKEN)
    assert len(tag) == 8
    assert int(tag, 16) >= 0
    assert tag not in TOKEN


def test_redact_replaces_every_name_in_a_text() -> None:
    client_id, group = f"telemetry-bridge-1-{TOKEN}", f"processors-{TOKEN}"
    text = f"bridge {client_id} consuming $share/{group}/chargers/v1/+/readings"
    shown = redact(text, (client_id, group))
    assert TOKEN not in shown
    assert shown == (
        f"bridge telemetry-bridge-1~{digest(TOKEN)} consuming "
        f"$share/processors~{digest(TOKEN)}/chargers/v1/+/readings"
    )
    assert redact(text, ()) == text
    assert redact(text, ("",)) == text
