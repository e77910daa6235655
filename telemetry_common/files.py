"""Files written whole or not at all, and kept across a power loss."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a file that has ``mode`` from its creation (a key is never readable by
    others, not even for a moment), flushed to disk, then replacing ``path`` atomically
    (:func:`replace_durably`): a reader sees the old file or the new one, never a part, and so
    does the next boot after a power loss."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_durably(source: Path, target: Path) -> None:
    """``os.replace(source, target)``, then the folder synced: the rename is on disk, in the
    order of the calls, before this returns."""
    os.replace(source, target)
    dir_fd = os.open(Path(target).parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
