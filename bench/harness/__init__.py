"""What every benchmark of bench/ shares, so each script keeps only its scenario and its figures:

- ``stack``: the servers a benchmark runs (Mosquitto, InfluxDB, the bridge, the API, helper
  processes), started through ``telemetry_stack.servers``, the code ``telemetry-stack up`` and the
  test fixtures use; the only module of bench/ that imports ``telemetry_stack``.
- ``mqtt``: the paho glue (a connected MQTT 5 client, PUBACK bookkeeping, a subscriber).
- ``readings``: reading payloads and the line protocol the benchmarks write.
- ``influx``: just enough of the InfluxDB 1.x HTTP API.
- ``procstat``: CPU seconds and resident memory of processes and of the machine, from /proc.
- ``report``: percentiles, verdicts and the figures table.
- ``cli``: argument helpers (settings given as ``KEY=VALUE``, ``--json``, ``--keep``), the working
  directory and the ``main`` wrapper (Ctrl-C and SIGTERM stop every process).
- ``http_load``: the load generators of the query API benchmark (wrk, or aiohttp in a process).
"""
