"""Test-only changes to a :class:`SystemStack`'s broker: directives of its rendered
mosquitto.conf replaced (a small queue cap, a faster ``$SYS`` interval) and ACL lines added (an
anonymous loopback reader of ``$SYS``), then the broker restarted by its recorded PID with
``telemetry-stack restart mosquitto`` (which starts it with the same, now edited, file).

The stack's shipped configuration (provisioning/broker_config.py) is not changed: only the files
rendered into the test's state directory.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.mqtt_recorder import Session, open_session
from tests.support.system_stack import SystemStack


def broker_files(stack: SystemStack) -> tuple[Path, Path]:
    """(mosquitto.conf, acl) the stack's broker runs with."""
    argv = stack.state["services"]["mosquitto"]["argv"]
    conf = Path(argv[argv.index("-c") + 1])
    found = re.search(r"^acl_file (.+)$", conf.read_text(), re.MULTILINE)
    assert found, f"no acl_file in {conf}"
    return conf, Path(found.group(1))


def tune_broker(
    stack: SystemStack, conf: dict[str, str | int], acl_lines: tuple[str, ...] = ()
) -> None:
    """Set ``conf`` directives (replaced where the file has them, else appended), put
    ``acl_lines`` first in the ACL (before any ``user`` line: they are the anonymous clients'),
    and restart the broker."""
    conf_file, acl_file = broker_files(stack)
    text = conf_file.read_text()
    for key, value in conf.items():
        line = f"{key} {value}"
        text, n = re.subn(rf"^{re.escape(key)} .*$", line, text, flags=re.MULTILINE)
        if n == 0:
            text += f"\n# set by the test (tests/support/broker_tuning.py)\n{line}\n"
    conf_file.write_text(text)
    if acl_lines:
        acl_file.write_text("\n".join(acl_lines) + "\n" + acl_file.read_text())
    stack.restart("mosquitto")


@dataclass
class SysWatch:
    """The latest values of some ``$SYS`` topics (numbers), read anonymously on the stack's
    loopback listener; needs ``topic read $SYS/#`` for anonymous clients (:func:`tune_broker`)."""

    session: Session
    latest: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, stack: SystemStack, topics: list[str]) -> SysWatch:
        s = open_session(stack.state["mqtt"]["local_port"], ca_file=stack.ca_file, cert=None)
        assert s.connected, f"anonymous loopback client not connected: {s.connack}"
        watch = cls(s)
        s.client.on_message = lambda _c, _u, msg: watch._seen(msg.topic, bytes(msg.payload))
        for topic in topics:
            granted = s.try_subscribe(topic)
            assert isinstance(granted, list), (topic, granted)
            assert granted[0] < 128, (topic, granted)
        return watch

    def _seen(self, topic: str, payload: bytes) -> None:
        try:
            value = float(payload.decode())
        except ValueError:
            return
        with self.lock:
            self.latest[topic] = value
            self.peak[topic] = max(value, self.peak.get(topic, value))

    def value(self, topic: str, timeout: float = 5.0) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if topic in self.latest:
                    return self.latest[topic]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def close(self) -> None:
        self.session.close()
