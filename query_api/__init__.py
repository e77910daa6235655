"""The REST API of charger-telemetry: FastAPI over InfluxQL and MQTT (``telemetry-api``).

settings.py   ApiSettings (env prefix TELEMETRY_API_)
auth.py       ``X-API-Key`` roles: read, ingest, admin; ingest keys bound to gateways
problems.py   every error as ``application/problem+json``
deps.py       typed access to app.state (settings, InfluxQL client, mirror, broker, clock)
clock.py      the wall and monotonic clocks routes read (a test gives its own)
lean.py       the hot routes (latest, history) dispatched as plain ASGI ahead of FastAPI
broker.py     the MQTT session: feeds the mirror, publishes ingested batches
latest/       each charger's newest reading: live mirror, trust rule, InfluxDB lookups, the
              charger index and the mirror sweep, charger state
pagecache.py  the one history cache: rendered pages, bounded by HISTORY_CACHE_MAX_BYTES
readings.py   response models, InfluxDB rows -> points (pure)
timespec.py   ``start``/``end``/``every`` parameters (pure)
params.py     parameters shared by routes (charger id, fields, windows)
cursor.py     opaque paging cursors (pure)
ingest.py     HTTP ingest bodies -> validated readings -> MQTT payloads (pure)
seqs.py       seq numbering of HTTP-ingested readings per gateway
metrics.py    Prometheus registry and the request timing middleware
routes/       one module per group of endpoints
app.py        ``create_app(settings)``
receive.py    header and body receive timeouts (a deadline per connection)
__main__.py   ``main()``: uvicorn

InfluxQL text is built only in ``telemetry_common/influxql.py``; the async InfluxQL client is
``telemetry_common/influx_query.py``. See docs/query-api.md.
"""
