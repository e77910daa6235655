"""The processor: the steps a batch of messages goes through, its outputs and its state.

Shaped like Telegraf's processors -> outputs, fed by the bridge's MQTT intake:

- steps: :mod:`.validate` (decode and validate one message), :mod:`.prepare` (a batch's CPU
  half: bindings, line protocol, each charger's newest reading), :mod:`.core` (the
  :class:`~processor.core.Processor`: prepare, then commit to the outputs and the state);
- :mod:`.outputs`: InfluxDB (retry and bisection beside the v1/v2 writers), dead letters, the
  live feed;
- :mod:`.state`: the last-value cache, the bindings and gap tracking, with their warm-up from
  InfluxDB;
- :mod:`.lineproto` (pure), :mod:`.metrics`, :mod:`.settings`.

Pure steps are tested without servers; I/O lives in ``outputs`` and ``state.storage``.
"""
