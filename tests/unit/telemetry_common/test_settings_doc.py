"""docs/settings.md is generated from the settings models and kept up to date."""

from __future__ import annotations

from pathlib import Path

from bridge.settings import BridgeSettings
from edge_agent.settings import EdgeSettings
from query_api.settings import ApiSettings
from rollups.settings import RollupsSettings
from telemetry_common import settings_doc
from telemetry_common.settings import settings_of


def test_settings_doc_is_up_to_date() -> None:
    """The committed docs/settings.md is what the generator writes from the models today: a
    setting added, removed or re-described without regenerating the file fails here (run
    ``python -m telemetry_common.settings_doc``)."""
    assert settings_doc.DOC.read_text(encoding="utf-8") == settings_doc.render()


def test_every_setting_is_described_and_in_the_doc() -> None:
    """Every variable a service reads has a description in its model and a row in the doc."""
    doc = settings_doc.DOC.read_text(encoding="utf-8")
    for cls in (EdgeSettings, BridgeSettings, ApiSettings, RollupsSettings):
        for setting in settings_of(cls):
            assert setting.description, f"{setting.env}: its field has no docstring (description)"
            name = f"`{setting.env}*`" if setting.group else f"`{setting.env}`"
            assert f"| {name} |" in doc, setting.env


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    """``--check`` fails on a file that differs from the models and passes on a fresh one."""
    out = tmp_path / "settings.md"
    out.write_text("# stale\n", encoding="utf-8")
    assert settings_doc.main(["--check", "--out", str(out)]) == 1
    assert settings_doc.main(["--out", str(out)]) == 0
    assert settings_doc.main(["--check", "--out", str(out)]) == 0
