"""The rendered Mosquitto configuration: secure listeners, bounds, the docs/design.md ACL."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioning import broker_config
from telemetry_common.errors import ConfigError, TopicError


def _render(tmp_path: Path, **overrides: object) -> broker_config.BrokerFiles:
    args: dict[str, object] = {
        "pki_dir": "/pki",
        "tls_port": 8883,
        "local_port": 1883,
        "service_port": 8884,
        "persistence_dir": "/var/lib/telemetry/mosquitto",
        "topic_root": "chargers/v1",
        "bind_host": "0.0.0.0",
    }
    args.update(overrides)
    return broker_config.render(tmp_path, **args)  # type: ignore[arg-type]


def _directives(conf: str) -> list[list[str]]:
    return [line.split() for line in conf.splitlines() if line.strip() and line[0] != "#"]


def _listeners(conf: str) -> list[tuple[list[str], list[list[str]]]]:
    """Each ``listener`` directive with the directives that follow it up to the next one."""
    out: list[tuple[list[str], list[list[str]]]] = []
    for d in _directives(conf):
        if d[0] == "listener":
            out.append((d, []))
        elif out:
            out[-1][1].append(d)
    return out


def test_no_plaintext_listener_beyond_loopback(tmp_path: Path) -> None:
    """Even with the TLS listener on 0.0.0.0, every listener without a certificate is bound to
    127.0.0.1, and the TLS listener requires a client certificate."""
    conf = _render(tmp_path).conf_file.read_text()
    listeners = _listeners(conf)
    assert len(listeners) == 3
    for head, body in listeners:
        keys = {d[0] for d in body}
        if "certfile" not in keys:
            assert head[2:] == ["127.0.0.1"], head
        else:
            assert ["require_certificate", "true"] in body
            assert ["use_identity_as_username", "true"] in body
            assert ["tls_version", "tlsv1.2"] in body
    assert listeners[0][0] == ["listener", "8883", "0.0.0.0"]
    assert listeners[1][0] == ["listener", "8884", "0.0.0.0"]
    assert listeners[2][0] == ["listener", "1883", "127.0.0.1"]


def test_gateway_listener_replaces_client_ids_and_services_have_their_own_ca(
    tmp_path: Path,
) -> None:
    """On the gateway listener the client id is the certificate CN (no gateway can take another's
    session); the services listener keeps client ids (bridges share a CN) and trusts only the
    services CA, so a gateway certificate cannot enter it."""
    conf = _render(tmp_path).conf_file.read_text()
    (gw_head, gw_body), (svc_head, svc_body), (_local, local_body) = _listeners(conf)
    assert gw_head[1] == "8883"
    assert ["use_username_as_clientid", "true"] in gw_body
    assert ["cafile", "/pki/ca.crt"] in gw_body
    assert svc_head[1] == "8884"
    assert not any(d[0] == "use_username_as_clientid" for d in svc_body)
    assert ["cafile", "/pki/services-ca.crt"] in svc_body
    assert ["require_certificate", "true"] in svc_body
    assert not any(d[0] == "use_username_as_clientid" for d in local_body)


def test_global_security_and_bounds_are_explicit(tmp_path: Path) -> None:
    """Global settings: one rule set, ACL and empty password file, persistence, queue/inflight/
    packet bounds, session expiry; the deprecated message_size_limit is not used."""
    files = _render(tmp_path)
    directives = _directives(files.conf_file.read_text())
    settings = {d[0]: d[1:] for d in directives if d[0] not in {"listener", "log_type"}}
    assert settings["per_listener_settings"] == ["false"]
    assert settings["acl_file"] == [str(tmp_path.resolve() / "acl")]
    assert settings["password_file"] == [str(tmp_path.resolve() / "passwd")]
    assert files.password_file.read_text() == ""
    assert settings["persistence"] == ["true"]
    assert settings["persistence_location"] == ["/var/lib/telemetry/mosquitto/"]
    assert settings["autosave_interval"] == ["5"]
    assert int(settings["max_queued_messages"][0]) == 100_000
    assert int(settings["max_queued_bytes"][0]) > 0
    assert int(settings["max_inflight_messages"][0]) > 20
    assert 0 < int(settings["max_inflight_bytes"][0]) <= 64 * 1024 * 1024
    assert int(settings["max_packet_size"][0]) >= 256 * 1024 + 1024
    assert settings["persistent_client_expiration"] == ["7d"]
    assert "message_size_limit" not in settings
    assert "user" not in settings


def test_run_as_user_is_written_when_given(tmp_path: Path) -> None:
    """run_as_user sets Mosquitto's `user` (so a root-started broker can read 0600 keys)."""
    conf = _render(tmp_path, run_as_user="root").conf_file.read_text()
    assert ["user", "root"] in _directives(conf)


def test_acl_for_a_custom_topic_root(tmp_path: Path) -> None:
    """The docs/design.md ACL is rendered for the configured root, bridge rules under its user."""
    acl = _render(tmp_path, topic_root="fleet/test-7").acl_file.read_text()
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "topic read fleet/test-7/live/#",
        "topic read fleet/test-7/deadletter/#",
        "topic read fleet/test-7/alarms/#",
        "pattern write fleet/test-7/%u/readings",
        "pattern readwrite fleet/test-7/%u/state",
        "pattern read fleet/test-7/%u/cmd/#",
        "pattern read fleet/test-7/%u/stored",
        "pattern write fleet/test-7/%u/reply/#",
        "user telemetry-bridge",
        "topic read fleet/test-7/+/readings",
        "topic read fleet/test-7/replay/+/readings",
        "topic read fleet/test-7/+/state",
        "topic readwrite fleet/test-7/live/#",
        "topic write fleet/test-7/deadletter/#",
        "topic write fleet/test-7/+/stored",
        "user telemetry-operator",
        "topic write fleet/test-7/+/cmd/#",
        "topic read fleet/test-7/+/reply/#",
        "user telemetry-api",
        "topic read fleet/test-7/live/#",
        "topic read fleet/test-7/+/state",
        "topic write fleet/test-7/+/readings",
        "topic read fleet/test-7/+/stored",
        "topic write fleet/test-7/replay/+/readings",
        "topic readwrite fleet/test-7/alarms/#",
    ]
    assert "chargers/v1" not in acl


@pytest.mark.parametrize("root", ["", "a/+/b", "a/#", "$share/x", "a//b"])
def test_bad_topic_roots_are_refused(tmp_path: Path, root: str) -> None:
    """A topic root with wildcards or empty levels never reaches the ACL."""
    with pytest.raises(TopicError):
        _render(tmp_path, topic_root=root)


@pytest.mark.parametrize(
    "overrides",
    [
        {"tls_port": 0},
        {"local_port": 8883},
        {"service_port": 8883},
        {"service_port": 1883},
        {"service_port": 70000},
        {"bind_host": "a b"},
        {"pki_dir": "/x\nlistener 1"},
    ],
)
def test_unusable_settings_are_refused(tmp_path: Path, overrides: dict[str, object]) -> None:
    """Bad ports, clashing ports and values that would inject directives raise ConfigError."""
    with pytest.raises(ConfigError):
        _render(tmp_path, **overrides)


def test_tls_listener_checks_client_certificates_against_the_crl(tmp_path: Path) -> None:
    """The TLS listener names the PKI's crl.pem (``crlfile``, so a revoked gateway is refused);
    the plaintext loopback listener, which takes no certificates, does not."""
    conf = _render(tmp_path).conf_file.read_text()
    (tls_head, tls_body), _services, (_local_head, local_body) = _listeners(conf)
    assert tls_head[1] == "8883"
    assert ["crlfile", "/pki/crl.pem"] in tls_body
    assert not any(d[0] == "crlfile" for d in local_body)


def test_render_conf_without_a_crl_names_none(tmp_path: Path) -> None:
    """render_conf called without ``crlfile`` (its callers before revocation existed) writes no
    ``crlfile`` directive, so Mosquitto does not look for a file that may not exist."""
    conf = broker_config.render_conf(
        cafile="/pki/ca.crt",
        certfile="/pki/server.crt",
        keyfile="/pki/server.key",
        acl_file="/c/acl",
        password_file="/c/passwd",
        persistence_location="/data",
        tls_port=8883,
        local_port=1883,
        service_port=8884,
        services_cafile="/pki/services-ca.crt",
    )
    assert not any(d[0] == "crlfile" for d in _directives(conf))
