"""The REST API of charger-telemetry: FastAPI over InfluxQL (``telemetry-api``).

settings.py   ApiSettings (env prefix TELEMETRY_API_)
influxql.py   the only place InfluxQL text is built (quoting, allow-lists)
influx.py     async InfluxQL client over the v1 ``/query`` endpoint
auth.py       ``X-API-Key`` roles: read, ingest, admin
problems.py   every error as ``application/problem+json``
readings.py   response models and InfluxDB rows -> readings (pure)
timespec.py   ``start``/``end``/``every`` parameters (RFC 3339, ``-1h``) (pure)
routes/       one module per group of endpoints
app.py        ``create_app(settings)``
__main__.py   ``main()``: uvicorn
"""
