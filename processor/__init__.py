"""The processor: validate -> dead-letter | batch -> InfluxDB; last-value cache; live feed.

Pure steps (``validate``, ``lineproto``, ``lvc``) are tested without servers; I/O lives in
``writer`` (InfluxDB) and ``pipeline`` (which also publishes dead letters and live values).
"""
