"""The rollup job (``telemetry-rollups``): retention of the raw readings and their 1-minute and
1-hour rollups, written from the project itself over InfluxQL and line protocol
(docs/design.md#rollups, docs/deploy.md#retention-and-rollups)."""
