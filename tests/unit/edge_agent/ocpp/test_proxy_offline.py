"""Proxy mode's pure parts: the settings' rules, the offline queue across a reopen (a gateway
restart), gateway transaction ids and their mapping, and the tap of the relayed frames."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.ocpp.offline import OfflineStore, is_queued, offline_answer, store_path
from edge_agent.ocpp.proxy import _map_tid
from edge_agent.ocpp.settings import OcppSettings
from edge_agent.ocpp.tap import FrameTap, Tap16, tap_for
from edge_agent.ocpp.v201 import tap as v201_tap
from edge_agent.ocpp.v201.tap import Tap201


def test_proxy_mode_needs_an_upstream_url_template() -> None:
    """mode=proxy without upstream_url, or one without {charger_id} or not ws(s), is refused at
    start; local mode needs none."""
    assert OcppSettings().mode == "local"
    for bad in (None, "ws://csms/ocpp/", "http://csms/ocpp/{charger_id}"):
        with pytest.raises(ValidationError):
            OcppSettings(mode="proxy", upstream_url=bad)
    ok = OcppSettings(mode="proxy", upstream_url="wss://csms/ocpp/{charger_id}")
    assert ok.upstream_url_for("CP-1") == "wss://csms/ocpp/CP-1"
    # the URLs may come from the chargers file instead (checked when it is read)
    by_file = OcppSettings(mode="proxy", chargers_file=Path("chargers.toml"))
    assert by_file.upstream_url_for("CP-1") is None


def test_only_transaction_related_messages_are_queued() -> None:
    """OCPP 1.6 §3.7: Start/StopTransaction and MeterValues of a transaction."""
    assert is_queued("StartTransaction", {})
    assert is_queued("StopTransaction", {"transactionId": 1})
    assert is_queued("MeterValues", {"transactionId": 1})
    assert not is_queued("MeterValues", {"connectorId": 1})
    assert not is_queued("BootNotification", {})
    assert not is_queued("StatusNotification", {})
    assert offline_answer("StopTransaction", {"idTag": "X"}, None) == {
        "idTagInfo": {"status": "Accepted"}
    }
    assert offline_answer("StopTransaction", {}, None) == {}


def test_in_2_0_1_only_transaction_events_are_queued() -> None:
    """OCPP 2.0.1 (block E): TransactionEvent is the transaction-related message; MeterValues
    (not transaction-related in 2.0.1) and 1.6's actions are not queued; the answer carries
    ``idTokenInfo`` only when the event carries an ``idToken``; an unknown subprotocol queues
    nothing."""
    v201 = "ocpp2.0.1"
    assert is_queued("TransactionEvent", {}, v201)
    for action in ("MeterValues", "StartTransaction", "StatusNotification", "BootNotification"):
        assert not is_queued(action, {"transactionId": "t"}, v201)
    assert not is_queued("StartTransaction", {}, "ocpp2.1")
    token = {"idToken": {"idToken": "04AA", "type": "ISO14443"}}
    assert offline_answer("TransactionEvent", token, None) == {
        "idTokenInfo": {"status": "Accepted"}
    }
    assert offline_answer("TransactionEvent", {}, None) == {}


def test_tap_for_2_0_1_is_tap201(tmp_path: Path) -> None:
    """One FrameTap protocol: 2.0.1's tap comes from the same ``tap_for`` as 1.6's."""
    from tests.unit.edge_agent.ocpp.test_v201_tap import shared

    assert isinstance(tap_for("ocpp2.0.1", "CS-1", shared(tmp_path)), Tap201)
    assert isinstance(tap_for("ocpp1.6", "CS-1", shared(tmp_path)), Tap16)
    assert v201_tap.FrameTap is FrameTap


def test_queue_ids_and_mapping_survive_a_reopen(tmp_path: Path) -> None:
    """Queued messages come back in order after the store is reopened; gateway ids are
    negative and distinct; the CSMS id mapping and the connector are kept; done() removes."""
    path = store_path(tmp_path / "ocpp-state.json")
    assert path.name == "ocpp-state.proxy.sqlite3"
    store = OfflineStore(path)
    tid = store.enqueue("CP-1", "u1", "StartTransaction", {"connectorId": 2}, connector=2)
    assert tid is not None
    assert tid < 0
    store.enqueue("CP-1", "u2", "MeterValues", {"transactionId": tid})
    other = store.enqueue("CP-2", "u3", "StartTransaction", {}, connector=1)
    assert other is not None
    assert other != tid
    store.close()

    store = OfflineStore(path)
    queued = store.pending("CP-1")
    assert [(q.unique_id, q.action, q.gateway_tid) for q in queued] == [
        ("u1", "StartTransaction", tid),
        ("u2", "MeterValues", None),
    ]
    assert store.connector_of("CP-1", tid) == 2
    assert store.csms_tid("CP-1", tid) is None
    store.map_transaction("CP-1", tid, 501)
    store.done(queued[0].seq)
    store.close()

    store = OfflineStore(path)
    assert [q.unique_id for q in store.pending("CP-1")] == ["u2"]
    assert store.csms_tid("CP-1", tid) == 501
    assert store.charger_tid("CP-1", 501) == tid
    assert store.charger_tid("CP-2", 501) is None  # another charger's ids are its own
    assert _map_tid({"transactionId": tid}, lambda t: store.csms_tid("CP-1", t)) == {
        "transactionId": 501
    }
    profile = {"connectorId": 1, "csChargingProfiles": {"transactionId": 501, "x": 1}}
    assert _map_tid(profile, lambda t: store.charger_tid("CP-1", t)) == {
        "connectorId": 1,
        "csChargingProfiles": {"transactionId": tid, "x": 1},
    }
    assert _map_tid({"transactionId": 7}, lambda t: store.csms_tid("CP-1", t)) is None
    store.close()
