"""Probing an MQTT listener the way an attacker would: a raw TCP (or TLS) connection with one
MQTT 5 CONNECT, reporting how far it got; TLS contexts down to TLS 1.0; a paho connect attempt
reduced to one sentence."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry_common.tls import client_context

WAIT_S = 10.0


def tls_context(
    ca_file: str | Path,
    cert: tuple[Path, Path] | None,
    *,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``ca_file``, presenting ``cert`` if given, TLS 1.2 or newer
    (at most ``max_version``)."""
    cert_file, key_file = cert if cert is not None else (None, None)
    ctx = client_context(Path(ca_file), cert_file, key_file)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def connect_packet(client_id: str) -> bytes:
    """An MQTT 5 CONNECT with clean start, keepalive 60 s and no properties."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(cid).to_bytes(2, "big") + cid
    assert len(body) < 128
    return b"\x10" + bytes([len(body)]) + body


@dataclass(frozen=True)
class Outcome:
    """How far a connection attempt got: ``stage`` is ``handshake`` (the TLS handshake failed),
    ``tls`` (refused by TLS after the client's handshake completed: TLS 1.3 verifies the client
    certificate then), ``mqtt`` (the broker answered or closed at the MQTT level)."""

    stage: str
    detail: str
    connack: int | None = None

    @property
    def accepted(self) -> bool:
        return self.connack == 0

    def __str__(self) -> str:
        return f"{self.stage}: {self.detail}"


def mqtt_connect(
    port: int,
    ctx: ssl.SSLContext | None,
    client_id: str = "sec-probe",
    *,
    timeout: float = WAIT_S,
) -> Outcome:
    """Open TCP to 127.0.0.1:``port`` (and TLS if ``ctx``), send CONNECT, and report what came
    back."""
    with contextlib.ExitStack() as closing:
        sock = closing.enter_context(socket.create_connection(("127.0.0.1", port), timeout))
        version, stage = "plaintext", "mqtt"
        if ctx is not None:
            try:
                sock = closing.enter_context(ctx.wrap_socket(sock, server_hostname="localhost"))
            except ssl.SSLError as exc:
                return Outcome("handshake", f"TLS handshake refused: {exc.reason or exc}")
            except OSError as exc:
                return Outcome("handshake", f"TLS handshake aborted: {exc!r}")
            assert isinstance(sock, ssl.SSLSocket)
            version, stage = str(sock.version()), "tls"
        try:
            sock.sendall(connect_packet(client_id))
            data = sock.recv(64)
        except ssl.SSLError as exc:
            return Outcome(stage, f"{version} then refused: {exc.reason or exc}")
        except OSError as exc:
            return Outcome(stage, f"{version} then {exc!r}")
    if not data:
        return Outcome(stage, f"{version}, connection closed")
    if data[0] == 0x20 and len(data) >= 4:
        return Outcome("mqtt", f"{version}, CONNACK reason {data[3]:#04x}", connack=data[3])
    return Outcome("mqtt", f"{version}, unexpected bytes {data[:8].hex()}")


def old_tls(version: ssl.TLSVersion, ctx: ssl.SSLContext) -> ssl.SSLContext:
    """``ctx`` pinned to exactly ``version`` (TLS 1.0/1.1 included), any cipher."""
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated in Python's ssl: on purpose here
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def local_openssl_cannot_speak(
    version: ssl.TLSVersion, pki_dir: Path, timeout: float = WAIT_S
) -> str | None:
    """None if this machine's OpenSSL completes a loopback handshake at exactly ``version``;
    otherwise why not (then the broker's refusal would prove nothing)."""
    server_ctx = old_tls(version, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    server_ctx.load_cert_chain(str(pki_dir / "server.crt"), str(pki_dir / "server.key"))
    client_ctx = old_tls(version, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(timeout)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with conn, server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except OSError:  # the client's side reports why
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=timeout) as raw,
                client_ctx.wrap_socket(raw) as tls,
            ):
                got = tls.version()
        except (ssl.SSLError, OSError) as exc:
            return f"the local OpenSSL cannot complete a {version.name} handshake: {exc!r}"
        finally:
            t.join(timeout)
    want = {"TLSv1_1": "TLSv1.1", "TLSv1": "TLSv1"}[version.name]
    return None if got == want else f"a {version.name} loopback handshake negotiated {got}"


def paho_connect_outcome(client: mqtt.Client, host: str, port: int, timeout: float = WAIT_S) -> str:
    """'connected' if the broker accepted the paho ``client``, else a description of the
    refusal."""
    connack: list[ReasonCode] = []
    dropped = threading.Event()

    def on_connect(
        _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        connack.append(rc)

    def on_disconnect(
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        dropped.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:  # the TLS handshake itself failed (TLS 1.2 reports it here)
        return f"handshake refused: {exc!r}"
    client.loop_start()
    dropped.wait(timeout)
    if connack and not connack[0].is_failure:
        return "connected"
    return f"refused: connack={connack} dropped={dropped.is_set()}"
