"""Which gateway may send readings for a charger (guarantee 6).

First-come by default (remembered through InfluxDB: warmed at start by
:mod:`processor.state.storage`), or provisioned from ``BINDINGS_FILE``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import orjson

from telemetry_common.errors import ConfigError
from telemetry_common.ids import check_id


class Bindings:
    """Which gateway may send readings for a charger.

    First-come (default): a charger is bound to the first gateway whose reading for it was
    accepted. Provisioned: only the given pairs are accepted, every other charger is refused.
    """

    def __init__(self, provisioned: Mapping[str, str] | None = None) -> None:
        self.provisioned = provisioned is not None
        self._bound: dict[str, str] = dict(provisioned or {})

    def claim(self, gateway_id: str, charger_id: str) -> str | None:
        """None if ``gateway_id`` may send for ``charger_id`` (binding it if new), else the
        gateway the charger is bound to (``""`` when provisioned and not listed)."""
        bound = self._bound.get(charger_id)
        if bound is None:
            if self.provisioned:
                return ""
            self._bound[charger_id] = gateway_id
            return None
        return None if bound == gateway_id else bound

    def seed(self, charger_id: str, gateway_id: str) -> None:
        if not self.provisioned:
            self._bound[charger_id] = gateway_id

    def __len__(self) -> int:
        return len(self._bound)


def load_bindings(path: Path | None, setting: str = "BINDINGS_FILE") -> Bindings:
    """Provisioned bindings from a JSON file ``{"charger_id": "gateway_id"}``; first-come when
    ``path`` is None. A file that cannot work raises ``ConfigError`` naming ``setting``."""
    if path is None:
        return Bindings()
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(setting, f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(setting, f"{path}: need {{charger: gateway}}")
    return Bindings({check_id("charger id", c): check_id("gateway id", g) for c, g in raw.items()})
