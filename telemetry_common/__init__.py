"""What every charger-telemetry service shares: the reading schema, ids, topics, settings, errors.

Each contract of ``docs/design.md`` is defined here once; services import it and never redefine it.
"""
