#!/bin/bash
# Run once by the influxdb:2.7 image after its first setup, as 10-dbrp.sh (see there).
#
# The retention policy `keep` of InfluxQL database `telemetry` (what must outlive raw readings:
# the charger bindings set through the API, measurement `bindings`): on 2.x a bucket of its own,
# `{bucket}_keep` with infinite retention (the name the v2 writer uses for rp=keep), mapped as
# `telemetry`.`keep` (not the default) so the bridges' InfluxQL and the API's v1 writes reach it.
set -euo pipefail

db="${TELEMETRY_INFLUXQL_DATABASE:-telemetry}"
bucket="${DOCKER_INFLUXDB_INIT_BUCKET}_keep"

bucket_id="$(influx bucket create --org "${DOCKER_INFLUXDB_INIT_ORG}" --name "${bucket}" \
  --retention 0 --hide-headers | awk '{print $1}')"
influx v1 dbrp create \
  --org "${DOCKER_INFLUXDB_INIT_ORG}" \
  --bucket-id "${bucket_id}" \
  --db "${db}" \
  --rp keep
echo "20-keep: bucket ${bucket} (infinite retention) mapped as InfluxQL ${db}.keep"
