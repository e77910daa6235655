#!/bin/bash
# Run once by the influxdb:2.7 image after its first setup, after 10-dbrp.sh (see there).
#
# Retention and rollups on InfluxDB 2.x (docs/deploy.md#retention-and-rollups): the rollup job
# (`telemetry-rollups`, compose service `rollups`) does not manage retention on 2.x; it writes
# the rollups to the buckets `{bucket}_rollup_1m` and `{bucket}_rollup_1h` (its writer maps a
# retention policy to `{bucket}_{rp}`) and reads them with InfluxQL as database `telemetry`,
# retention policies `rollup_1m`/`rollup_1h`. This creates both buckets with their DBRP
# mappings, and sets the raw bucket's retention. To change a duration later:
# `influx bucket update --id ID --retention 8760h`.
set -euo pipefail

db="${TELEMETRY_INFLUXQL_DATABASE:-telemetry}"
bucket="${DOCKER_INFLUXDB_INIT_BUCKET}"
org="${DOCKER_INFLUXDB_INIT_ORG}"
raw_retention="${RAW_RETENTION:-720h}"          # 30 days
rollup_1m_retention="${ROLLUP_1M_RETENTION:-8760h}"  # 365 days
rollup_1h_retention="${ROLLUP_1H_RETENTION:-43800h}" # 1825 days

influx bucket update --id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" --retention "${raw_retention}"

for rp in rollup_1m rollup_1h; do
  if [ "${rp}" = rollup_1m ]; then retention="${rollup_1m_retention}"; else retention="${rollup_1h_retention}"; fi
  name="${bucket}_${rp}"
  influx bucket create --org "${org}" --name "${name}" --retention "${retention}"
  id="$(influx bucket list --org "${org}" --name "${name}" --hide-headers | awk '{print $1}')"
  influx v1 dbrp create --org "${org}" --bucket-id "${id}" --db "${db}" --rp "${rp}"
  echo "20-rollups: bucket ${name} (retention ${retention}) mapped to ${db}.${rp}"
done
echo "20-rollups: raw bucket ${bucket} keeps ${raw_retention}"
