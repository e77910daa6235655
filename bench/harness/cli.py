"""Argument helpers and the ``main`` of every benchmark: extra settings of a started service as
``KEY=VALUE`` (names checked against its settings model), ``--json`` and ``--keep``, the
temporary working directory, and Ctrl-C/SIGTERM unwinding through every ``finally`` that stops
a process."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic_settings import BaseSettings

from telemetry_common.settings import env_for

Figures = dict[str, Any]


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of ``python -m module`` (add :func:`add_output_options` last)."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description)


def add_env_option(
    p: argparse.ArgumentParser,
    flag: str,
    service: str,
    settings: type[BaseSettings],
    **example: object,
) -> None:
    """A repeatable ``flag KEY=VALUE``: an extra setting for ``service`` (whose settings model
    is ``settings``); the help shows ``example`` spelled as its variable."""
    (name, value), *_ = env_for(settings, **example).items()
    p.add_argument(
        flag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"extra setting for the {service} (e.g. {name}={value})",
    )


def parse_env(
    p: argparse.ArgumentParser, flag: str, items: list[str], settings: type[BaseSettings]
) -> dict[str, str]:
    """``KEY=VALUE`` items as a dict; each key must carry the prefix of ``settings``."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    for item in items:
        if "=" not in item or not item.startswith(prefix):
            p.error(f"{flag} {item!r}: expected {prefix}NAME=VALUE")
    return dict(item.split("=", 1) for item in items)


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, help="write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")


@contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for servers, logs and certificates; removed unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    log(f"working directory {work}")
    try:
        yield work
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_and_report(
    a: argparse.Namespace,
    run: Callable[[argparse.Namespace], Figures],
    report: Callable[[Figures], None],
) -> None:
    """Run a benchmark, print its table and write ``--json``. Ctrl-C and SIGTERM unwind
    through every ``finally`` that stops a process (installed explicitly: a shell starting us
    in the background would have SIGINT ignored)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        fig = run(a)
    except KeyboardInterrupt:
        log("interrupted; every process was stopped")
        raise SystemExit(130) from None
    report(fig)
    if a.json is not None:
        a.json.write_text(json.dumps(fig, indent=2) + "\n", encoding="utf-8")
        log(f"figures written to {a.json}")
