"""The ``ocpp`` source: a local OCPP 1.6J / 2.0.1 central system, or a proxy to the operator's CSMS,
whose chargers' MeterValues and StatusNotifications, transactions and BootNotifications become
captures (see docs/ocpp.md).

    settings.py      OcppSettings (host, port, TLS, limits; TELEMETRY_EDGE_OCPP__*)
    server.py        CentralSystem (WebSocket endpoint, handshake, ack-after-store), ocpp_source
    chargers.py      the per-charger TOML file (security profile, password hash, upstream CSMS)
    auth.py          security profiles 1-3 at the handshake; password hashes
    session.py       one charger's connection: the requests it sends and their answers
    frames.py        OCPP-J framing and the CALLERROR for a malformed frame
    models.py        MeterValues / StopTransaction payloads, OCPP 1.6 error codes
    translate.py     requests -> Captures (status, transactions, checks)
    mapping.py       sampled values -> value keys and units (pure)
    sanity.py        energy-register checks (flags, never corrections)
    transactions.py  transaction ids unique across restarts
    idtags.py        id tags: salted hashes, the salt, kept out of logs
    lib.py           the typed face of the untyped ``ocpp`` library
    v201/            OCPP 2.0.1: models, translation, local session, the proxy's Tap201
    proxy.py         proxy mode: one charger's relay to the CSMS (version-independent)
    tap.py           proxy mode: telemetry out of the relayed frames (FrameTap, tap_for)
    offline.py       proxy mode: the durable queue while the CSMS is unreachable, id mapping
"""

from edge_agent.ocpp.server import CentralSystem, ocpp_source
from edge_agent.ocpp.settings import OcppSettings

__all__ = ["CentralSystem", "OcppSettings", "ocpp_source"]
