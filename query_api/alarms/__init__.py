"""Alarms as a stream (docs/alarms.md): evaluated in ``telemetry-api`` from its live mirror, the
gateways' retained state and InfluxDB; kept in InfluxDB (measurement ``alarms``) and published
retained on ``{root}/alarms/{kind}/{subject}`` while active.

- :mod:`.rules`: each kind's condition (pure);
- :mod:`.store`: an occurrence, its InfluxDB point and its retained message;
- :mod:`.loop`: the periodic evaluation, raise once and clear once, across restarts.
"""
