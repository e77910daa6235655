"""Which gateway may send readings for a charger (guarantee 6).

Two modes (``TELEMETRY_BRIDGE_BINDINGS``):

- ``provisioned`` (the default): only bound chargers are accepted. A charger's binding is its
  newest change in the bindings store (InfluxDB measurement ``bindings`` in retention policy
  ``keep``, written by the API's admin endpoints; ``""`` = unbound) if the store names it, else
  its line of ``BINDINGS_FILE`` if any. So the store overrides the file for a charger it names,
  and a DELETE in the store unbinds a charger even if the file lists it.
- ``first-come`` (a dev option): as provisioned, and a charger bound nowhere is bound to the
  first gateway whose reading for it is accepted (remembered through InfluxDB: warmed at start
  by :mod:`processor.state.storage`). A DELETE in the store frees the charger for the next
  gateway that sends for it.

The store is loaded at start and refreshed every ``BINDINGS_REFRESH_S``
(:func:`processor.state.storage.refresh_bindings_forever`). The file is read by
:func:`telemetry_common.bindings.read_bindings_file` (the API lists it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

from telemetry_common.bindings import read_bindings_file

BindingsMode = Literal["provisioned", "first-come"]
PROVISIONED: Final = "provisioned"
FIRST_COME: Final = "first-come"


class Bindings:
    """Which gateway may send readings for a charger (see the module's docstring)."""

    def __init__(
        self, provisioned: Mapping[str, str] | None = None, *, first_come: bool | None = None
    ) -> None:
        """``provisioned``: the bindings file's pairs; ``first_come`` (default: when no file is
        given, as before modes existed) binds unknown chargers to their first gateway."""
        self.first_come = provisioned is None if first_come is None else first_come
        self._file: dict[str, str] = dict(provisioned or {})
        self._store: dict[str, str] = {}  # charger -> gateway ("" = unbound)
        self._learned: dict[str, str] = {}  # first-come only
        self._bound: dict[str, str] = dict(self._file)  # the effective bindings
        #: Wall-clock time (s) of the last successful load of the store; None before the first.
        self.refreshed_at: float | None = None
        self.refresh_errors = 0

    @property
    def provisioned(self) -> bool:
        return not self.first_come

    @property
    def mode(self) -> BindingsMode:
        return FIRST_COME if self.first_come else PROVISIONED

    def claim(self, gateway_id: str, charger_id: str) -> str | None:
        """None if ``gateway_id`` may send for ``charger_id`` (binding it if new and
        first-come), else the gateway the charger is bound to (``""`` when bound to none)."""
        bound = self._bound.get(charger_id)
        if bound is None:
            if not self.first_come:
                return ""
            self._bound[charger_id] = self._learned[charger_id] = gateway_id
            return None
        return None if bound == gateway_id else bound

    def check(self, gateway_id: str, charger_id: str) -> str | None:
        """As :meth:`claim`, without binding: None if ``gateway_id`` may send for
        ``charger_id`` (first-come: also when the charger is bound nowhere yet)."""
        bound = self._bound.get(charger_id)
        if bound is None:
            return None if self.first_come else ""
        return None if bound == gateway_id else bound

    def seed(self, charger_id: str, gateway_id: str) -> None:
        """First-come: ``gateway_id`` sent the charger's newest stored reading (warm-up)."""
        if self.first_come:
            self._learned[charger_id] = gateway_id
            self._resolve(charger_id)

    def apply(self, changes: Mapping[str, str]) -> int:
        """Take the store's newest change per charger (``""``: unbound); returns how many
        chargers' bindings this changed."""
        changed = 0
        for charger_id, gateway_id in changes.items():
            before = self._bound.get(charger_id)
            self._store[charger_id] = gateway_id
            if not gateway_id:
                self._learned.pop(charger_id, None)  # first-come: free for the next sender
            self._resolve(charger_id)
            changed += self._bound.get(charger_id) != before
        return changed

    def _resolve(self, charger_id: str) -> None:
        stored = self._store.get(charger_id)
        if stored is not None:
            bound: str | None = stored or None
        else:
            bound = self._file.get(charger_id) or self._learned.get(charger_id)
        if bound is None:
            self._bound.pop(charger_id, None)
        else:
            self._bound[charger_id] = bound

    def get(self, charger_id: str) -> str | None:
        """The gateway ``charger_id`` is bound to now, or None."""
        return self._bound.get(charger_id)

    def status(self) -> dict[str, object]:
        """Sizes and the last refresh (the bridge's ``/status``)."""
        return {
            "mode": self.mode,
            "bound": len(self._bound),
            "from_file": len(self._file),
            "from_store": sum(1 for g in self._store.values() if g),
            "learned": len(self._learned),
            "refreshed_at": self.refreshed_at,
            "refresh_errors": self.refresh_errors,
        }

    def __len__(self) -> int:
        return len(self._bound)


__all__ = ["FIRST_COME", "PROVISIONED", "Bindings", "load_bindings", "read_bindings_file"]


def load_bindings(
    path: Path | None, setting: str = "BINDINGS_FILE", *, mode: BindingsMode = PROVISIONED
) -> Bindings:
    """The bindings of ``mode``, with the file at ``path`` (if any) read at once, so a bad file
    fails before any connection (``ConfigError`` naming ``setting``)."""
    pairs = read_bindings_file(path, setting) if path is not None else {}
    return Bindings(pairs, first_come=mode == FIRST_COME)
