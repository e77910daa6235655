"""provisioning.bridge_session: the bridges' client id and share group are unguessable,
valid MQTT/id names, private on disk and the same on every later start of one deployment."""

from __future__ import annotations

import stat
from pathlib import Path

from bridge.settings import DEFAULT_CLIENT_ID
from provisioning.bridge_session import FILE_NAME, bridge_names
from telemetry_common.ids import is_valid_id
from telemetry_common.topics import SHARE_GROUP


def test_names_are_random_per_deployment_and_stable_within_one(tmp_path: Path) -> None:
    """Two state dirs get different names; one state dir keeps its names (a new name would
    orphan the broker's persistent session); the secret file is 0600."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = bridge_names(a)
    assert bridge_names(a) == first
    assert bridge_names(b) != first
    client_id, group = first
    assert client_id != DEFAULT_CLIENT_ID
    assert group != SHARE_GROUP
    assert is_valid_id(client_id)
    assert is_valid_id(group)
    token = (a / FILE_NAME).read_text().strip()
    assert len(token) >= 32
    assert token in client_id
    assert token in group
    assert stat.S_IMODE((a / FILE_NAME).stat().st_mode) == 0o600


def test_a_damaged_secret_file_is_replaced(tmp_path: Path) -> None:
    """An empty or non-alphanumeric secret is not used (it could be guessable or invalid)."""
    (tmp_path / FILE_NAME).write_text("x/y\n")
    client_id, _ = bridge_names(tmp_path)
    assert "x/y" not in client_id
    assert is_valid_id(client_id)
