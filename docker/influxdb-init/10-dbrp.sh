#!/bin/bash
# Run once by the influxdb:2.7 image, right after its first setup (DOCKER_INFLUXDB_INIT_MODE=setup;
# never again once the data volume holds a database), against the temporary setup instance with
# the influx CLI already configured with the admin token. The image exports
# DOCKER_INFLUXDB_INIT_BUCKET_ID and DOCKER_INFLUXDB_INIT_ORG for such scripts.
#
# Maps the InfluxQL database `telemetry` (retention policy `autogen`) explicitly onto the setup
# bucket, so the API's `/query?db=telemetry`, Grafana's InfluxQL datasource and v1 writes reach
# it, rather than relying on 2.x's implicit virtual mapping (which follows the bucket's name).
set -euo pipefail

db="${TELEMETRY_INFLUXQL_DATABASE:-telemetry}"

influx v1 dbrp create \
  --org "${DOCKER_INFLUXDB_INIT_ORG}" \
  --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --db "${db}" \
  --rp autogen \
  --default
echo "10-dbrp: mapped InfluxQL database ${db} (rp autogen) to bucket ${DOCKER_INFLUXDB_INIT_BUCKET}"
