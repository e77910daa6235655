"""The chargers file, password hashes and the ``passwd`` edit (no sockets)."""

from __future__ import annotations

import base64
import os
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner
from websockets.datastructures import Headers

from edge_agent.cli import app
from edge_agent.ocpp.auth import (
    MAX_ADDRESSES,
    MAX_FAILURES,
    Authenticator,
    PasswordError,
    basic_credentials,
    check_password,
    hash_password,
    verify_password,
)
from edge_agent.ocpp.chargers import ChargersConfig, load_chargers
from edge_agent.ocpp.session import Counters
from edge_agent.ocpp_cli import set_password_hash, with_password_hash
from telemetry_common.errors import ConfigError

HASH = hash_password("correct horse battery", salt=b"s" * 16)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chargers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_fill_in_what_a_charger_omits(tmp_path: Path) -> None:
    """A charger's own keys win; the rest comes from [defaults]; the URL template is filled
    in; relative paths are relative to the file."""
    path = write(
        tmp_path,
        f"""
[defaults]
security_profile = 1
upstream_url = "wss://csms.example/ocpp/{{charger_id}}"
upstream_ca_file = "csms-ca.pem"
[chargers.CP-1]
password_hash = "{HASH}"
[chargers.CP-2]
password_hash = "{HASH}"
security_profile = 2
upstream_url = "ws://other:9000/x/CP-2"
""",
    )
    config = load_chargers(path)
    one, two = config.charger("CP-1"), config.charger("CP-2")
    assert one is not None
    assert two is not None
    assert (one.security_profile, two.security_profile) == (1, 2)
    assert one.upstream_ca_file == tmp_path / "csms-ca.pem"
    assert config.upstream_url("CP-1") == "wss://csms.example/ocpp/CP-1"
    assert config.upstream_url("CP-2") == "ws://other:9000/x/CP-2"
    assert config.charger("CP-3") is None  # profile 1 by default: unknown chargers refused
    assert config.profiles() == {1, 2}


def test_unknown_chargers_are_allowed_only_with_profile_0_unless_said(tmp_path: Path) -> None:
    """Secure by default: with a profile >= 1 an unlisted charger may not connect; with
    profile 0 it may; ``allow_unknown`` overrides both ways."""
    assert load_chargers(write(tmp_path, "[defaults]\n")).charger("X") is not None
    assert load_chargers(write(tmp_path, "[defaults]\nsecurity_profile = 3\n")).charger("X") is None
    allowed = "[defaults]\nsecurity_profile = 3\nallow_unknown = true\n"
    assert load_chargers(write(tmp_path, allowed)).charger("X") is not None
    closed = "[defaults]\nallow_unknown = false\n"
    assert load_chargers(write(tmp_path, closed)).charger("X") is None
    assert ChargersConfig.open().charger("anything") is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[defaults\n", r"not valid TOML: .*line 1"),
        ("[defaults]\nsecurity_profil = 1\n", r"\[defaults\.security_profil\]: Extra inputs"),
        ("[defaults]\nsecurity_profile = 4\n", r"\[defaults\.security_profile\]"),
        ('[chargers."a b"]\n', r"\[chargers\.a b"),
        ('[chargers.CP-1]\npassword_hash = "plain"\n', r"\[chargers\.CP-1\.password_hash\]"),
        ('[defaults]\nupstream_url = "ws://x/{id}"\n', r"only \{charger_id\}"),
        ('[defaults]\nupstream_url = "http://x/"\n', r"ws:// or wss://"),
        ("[defaults]\nsecurity_profile = 1\n[chargers.CP-1]\n", r"passwd CP-1"),
        ('[chargers.CP-1]\nupstream_cert_file = "c.pem"\n', r"together"),
    ],
)
def test_a_bad_file_is_refused_whole_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Syntax (with its line), unknown keys, bad values, a profile-1 charger without a hash:
    a ConfigError naming the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as refused:
        load_chargers(path)
    assert str(path) in str(refused.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_chargers(tmp_path / "nope.toml")


def test_upstream_connect_kwargs_carry_basic_auth_and_tls(tmp_path: Path) -> None:
    """Basic auth is ``charger_id:upstream_password``; ``wss://`` gets a TLS context; a
    ``ws://`` upstream without a client certificate gets none; no password, no header."""
    path = write(
        tmp_path,
        """
[defaults]
upstream_url = "wss://csms.example/{charger_id}"
[chargers.CP-1]
upstream_password = "s3cret:with colon"
[chargers.CP-2]
upstream_url = "ws://csms.example/CP-2"
""",
    )
    config = load_chargers(path)
    kwargs = config.upstream_connect_kwargs("CP-1")
    (name, value), *_ = kwargs["additional_headers"]
    assert name == "Authorization"
    assert base64.b64decode(value.removeprefix("Basic ")) == b"CP-1:s3cret:with colon"
    assert kwargs["ssl"].check_hostname
    assert config.upstream_connect_kwargs("CP-2") == {}
    assert "s3cret" not in repr(config.charger("CP-1"))


def test_a_wss_url_from_the_settings_gets_the_files_tls(tmp_path: Path) -> None:
    """No ``upstream_url`` in the file (it comes from ``OcppSettings``): given the URL, a
    ``wss://`` one still gets the TLS context (the file's ``upstream_ca_file`` applies), a
    ``ws://`` one none."""
    path = write(tmp_path, "[defaults]\nsecurity_profile = 0\n[chargers.CP-1]\n")
    config = load_chargers(path)
    assert config.upstream_url("CP-1") is None
    tls = config.upstream_connect_kwargs("CP-1", "wss://csms.example/CP-1")["ssl"]
    assert tls.check_hostname
    assert config.upstream_connect_kwargs("CP-1", "ws://csms.example/CP-1") == {}


def test_password_hashes_verify_only_the_password() -> None:
    """scrypt with a per-entry salt: the same password hashes differently twice, verifies;
    another password or a damaged hash does not."""
    first, second = hash_password("a" * 16), hash_password("a" * 16)
    assert first != second
    assert verify_password(first, "a" * 16)
    assert verify_password(second, "a" * 16)
    assert not verify_password(first, "a" * 17)
    assert not verify_password("scrypt$broken", "a" * 16)
    assert not verify_password(first.replace("scrypt", "bcrypt"), "a" * 16)


@pytest.mark.parametrize("password", ["a" * 15, "a" * 41, ""])
def test_password_length_follows_the_whitepaper(password: str) -> None:
    with pytest.raises(PasswordError):
        check_password(password)
    check_password("a" * 16)
    check_password("a" * 40)


def test_basic_credentials_parsing() -> None:
    token = base64.b64encode(b"CP-1:pass:word").decode()
    assert basic_credentials(Headers(Authorization=f"Basic {token}")) == ("CP-1", "pass:word")
    assert basic_credentials(Headers(Authorization=f"basic {token}")) == ("CP-1", "pass:word")
    assert basic_credentials(Headers()) is None
    assert basic_credentials(Headers(Authorization="Bearer x")) is None
    assert basic_credentials(Headers(Authorization="Basic !!!")) is None
    no_colon = base64.b64encode(b"CP-1").decode()
    assert basic_credentials(Headers(Authorization=f"Basic {no_colon}")) is None


def test_passwd_edit_keeps_the_rest_of_the_file() -> None:
    """Replaces the charger's hash line, or adds it under its table, or appends the table;
    comments and other tables are kept; a dotted id gets a quoted key."""
    text = (
        "# site A\n[defaults]\nsecurity_profile = 1  # basic\n\n"
        '[chargers.CP-1]\npassword_hash = "scrypt$old"\nupstream_password = "u"\n\n'
        "[chargers.CP-2]\n# no hash yet\n"
    )
    edited = with_password_hash(text, "CP-1", "scrypt$new")
    assert 'password_hash = "scrypt$new"\nupstream_password = "u"' in edited
    assert "scrypt$old" not in edited
    edited = with_password_hash(edited, "CP-2", "scrypt$two")
    edited = with_password_hash(edited, "CP.3", "scrypt$three")
    assert edited.startswith("# site A\n[defaults]\nsecurity_profile = 1  # basic\n")
    assert "# no hash yet" in edited
    parsed = tomllib.loads(edited)["chargers"]
    assert {k: v["password_hash"] for k, v in parsed.items()} == {
        "CP-1": "scrypt$new",
        "CP-2": "scrypt$two",
        "CP.3": "scrypt$three",
    }


def test_set_password_hash_is_atomic_and_checks_the_result(tmp_path: Path) -> None:
    """A new file is created 0600 and loads; an edit that would leave an invalid file changes
    nothing and names the real file."""
    path = tmp_path / "new.toml"
    set_password_hash(path, "CP-1", HASH)
    assert path.stat().st_mode & 0o777 == 0o600
    charger = load_chargers(path).charger("CP-1")
    assert charger is not None
    assert charger.password_hash == HASH
    broken = write(tmp_path, "[defaults]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=str(broken)):
        set_password_hash(broken, "CP-1", HASH)
    assert broken.read_text() == "[defaults]\nbogus = 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chargers.toml", "new.toml"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_set_password_hash_keeps_the_files_owner(tmp_path: Path) -> None:
    """``sudo edge-agent ocpp passwd`` on the file of the agent's own user: the new file keeps
    that owner (and mode), or the agent could no longer read its chargers file."""
    path = write(tmp_path, "[defaults]\nsecurity_profile = 1\n")
    os.chown(path, 65534, 65534)
    path.chmod(0o640)
    set_password_hash(path, "CP-1", HASH)
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o640)


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    """Failures from ever new addresses do not grow the gateway's memory without bound."""
    auth = Authenticator(ChargersConfig.open(), Counters())
    for i in range(MAX_ADDRESSES + 100):
        auth._remember_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(auth._recent) == MAX_ADDRESSES
    for _ in range(MAX_FAILURES):
        auth._remember_failure("192.0.2.1")
    assert auth._throttled("192.0.2.1")
    assert not auth._throttled("192.0.2.2")


def test_the_passwd_command(tmp_path: Path) -> None:
    """``edge-agent ocpp passwd`` reads one line of stdin and stores only its hash; a short
    password or a bad id changes nothing (exit 2)."""
    path = write(tmp_path, "# keep me\n[defaults]\nsecurity_profile = 1\n")
    runner = CliRunner()
    args = ["ocpp", "passwd", "CP-7", "--file", str(path)]
    done = runner.invoke(app, args, input="a-long-enough-password\n")
    assert done.exit_code == 0, done.output
    charger = load_chargers(path).charger("CP-7")
    assert charger is not None
    assert charger.password_hash is not None
    assert verify_password(charger.password_hash, "a-long-enough-password")
    assert "a-long-enough-password" not in path.read_text()
    assert path.read_text().startswith("# keep me\n")
    before = path.read_text()
    assert runner.invoke(app, args, input="too-short\n").exit_code == 2
    bad_id = ["ocpp", "passwd", "CP 7", "--file", str(path)]
    assert runner.invoke(app, bad_id, input="a-long-enough-password\n").exit_code == 2
    assert path.read_text() == before


def test_a_readable_file_with_upstream_passwords_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, '[chargers.CP-1]\nupstream_password = "x"\n')
    path.chmod(0o644)
    load_chargers(path)
    assert "chmod 600" in caplog.text
    caplog.clear()
    path.chmod(0o600)
    load_chargers(path)
    assert "chmod 600" not in caplog.text


def test_upstream_credentials_for_an_unauthenticated_charger_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A charger that connects with profile 0 but whose CSMS connection carries credentials
    (a password or a client certificate): anyone on the site network who connects as that id
    while the charger is away gets the CSMS session the credentials open. Allowed (old chargers
    speak only profile 0), but said at start, naming the charger and the fix."""
    path = write(
        tmp_path,
        '[chargers.CP-1]\nupstream_password = "x"\n'
        '[chargers.CP-2]\nsecurity_profile = 1\npassword_hash = "'
        + hash_password("a-long-enough-password")
        + '"\nupstream_password = "y"\n',
    )
    path.chmod(0o600)
    load_chargers(path)
    warned = [r.getMessage() for r in caplog.records if "profile 0" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "CP-1" in warned[0]
    assert "security_profile" in warned[0]
