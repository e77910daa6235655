"""The exception hierarchy shared by every service.

    TelemetryError
    ├── InvalidIdError          an id outside the allow-list (carries kind and value)
    ├── TopicError              a topic that is not one of ours (carries the topic)
    ├── ConfigError             settings that cannot work (carries the setting name)
    └── DependencyUnavailable   a server we need did not answer in time (carries its name)

Library errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Base class of every error raised on purpose by charger-telemetry."""


class InvalidIdError(TelemetryError, ValueError):
    def __init__(self, kind: str, value: object) -> None:
        super().__init__(f"invalid {kind} {value!r}: must match ^[A-Za-z0-9._-]{{1,64}}$")
        self.kind = kind
        self.value = value


class TopicError(TelemetryError, ValueError):
    def __init__(self, topic: str, expected: str) -> None:
        super().__init__(f"topic {topic!r} is not {expected}")
        self.topic = topic
        self.expected = expected


class ConfigError(TelemetryError):
    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class DependencyUnavailable(TelemetryError):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name} is not available: {detail}")
        self.name = name
        self.detail = detail
