"""The sessions job (``telemetry-sessions``): charging sessions computed from the stored readings
(docs/design.md#sessions, docs/deploy.md#sessions)."""
