"""``edge-agent ocpp passwd <charger_id>``: set a charger's password hash in the chargers file.

The password is read from the terminal (twice) or one line of stdin; only its scrypt hash is
written. The file is edited line by line (comments and layout kept): the charger's
``password_hash`` line is replaced, or added under its ``[chargers.<id>]`` table, or the table is
appended. The result is checked as a whole and replaces the file atomically (same mode).
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from edge_agent.ocpp.auth import PasswordError, check_password, hash_password
from edge_agent.ocpp.chargers import load_chargers
from edge_agent.outbox_cli import load_settings
from telemetry_common.errors import ConfigError
from telemetry_common.ids import is_valid_id

ocpp_app = typer.Typer(help="OCPP chargers: credentials.")


@ocpp_app.command()
def passwd(
    charger_id: Annotated[str, typer.Argument(help="The charger id (its URL's last segment).")],
    file: Annotated[
        Path | None,
        typer.Option(help="The chargers file (default: TELEMETRY_EDGE_OCPP__CHARGERS_FILE)."),
    ] = None,
) -> None:
    """Set CHARGER_ID's password (OCPP security profile 1/2: 16-40 characters)."""
    if not is_valid_id(charger_id):
        _fail(f"{charger_id!r} is not a valid charger id (^[A-Za-z0-9._-]{{1,64}}$)")
    path = file or load_settings().ocpp.chargers_file
    if path is None:
        _fail("no chargers file: pass --file or set TELEMETRY_EDGE_OCPP__CHARGERS_FILE")
    password = _read_password()
    try:
        check_password(password)
    except PasswordError as exc:
        _fail(str(exc))
    try:
        set_password_hash(path, charger_id, hash_password(password))
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(f"password of {charger_id} set in {path}", err=True)


def _fail(message: str) -> NoReturn:
    typer.echo(f"edge-agent: {message}", err=True)
    raise typer.Exit(2)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            _fail("the passwords differ; nothing changed")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _table_of(line: str) -> tuple[str, ...] | None:
    """The key path of a ``[table]`` header line, else None (array tables included)."""
    stripped = line.strip()
    if not stripped.startswith("[") or stripped.startswith("[["):
        return None
    try:
        parsed = tomllib.loads(stripped)
    except tomllib.TOMLDecodeError:
        return None
    keys: list[str] = []
    while isinstance(parsed, dict) and len(parsed) == 1:
        key, parsed = next(iter(parsed.items()))
        keys.append(key)
    return tuple(keys)


def _header(charger_id: str) -> str:
    return f'[chargers."{charger_id}"]' if "." in charger_id else f"[chargers.{charger_id}]"


def with_password_hash(text: str, charger_id: str, hashed: str) -> str:
    """``text`` with ``charger_id``'s ``password_hash`` set to ``hashed``, the rest unchanged."""
    lines = text.splitlines(keepends=True)
    entry = f'password_hash = "{hashed}"\n'
    start = next(
        (i for i, line in enumerate(lines) if _table_of(line) == ("chargers", charger_id)), None
    )
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        sep = ["\n"] if lines else []
        return "".join([*lines, *sep, _header(charger_id) + "\n", entry])
    end = next((i for i in range(start + 1, len(lines)) if _table_of(lines[i])), len(lines))
    for i in range(start + 1, end):
        if lines[i].split("=", 1)[0].strip() == "password_hash":
            lines[i] = entry
            return "".join(lines)
    lines.insert(start + 1, entry)
    return "".join(lines)


def set_password_hash(path: Path, charger_id: str, hashed: str) -> None:
    """Write ``charger_id``'s hash into ``path`` (created 0600 if missing; an existing file's
    mode and owner are kept), atomically; the edited file must load (:func:`load_chargers`)
    and hold the new hash, else nothing changes."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    st = path.stat() if path.exists() else None
    mode = st.st_mode & 0o777 if st is not None else 0o600
    edited = with_password_hash(text, charger_id, hashed)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(edited)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(tmp, st.st_uid, st.st_gid)  # sudo: the agent's user must still read it
        try:
            config = load_chargers(tmp, complete=False)
        except ConfigError as exc:  # name the real file, not the temporary one
            raise ConfigError(exc.setting, exc.problem.replace(str(tmp), str(path))) from exc
        written = config.chargers.get(charger_id)
        if written is None or written.password_hash != hashed:
            raise ConfigError("ocpp.chargers_file", f"{path}: could not place the hash")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
