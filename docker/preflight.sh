#!/bin/sh
# Refuses to start the stack with placeholder secrets outside the dev profile.
#
# Run by the one-shot `preflight` service of docker-compose.yml, which every other service
# waits for (directly or through pki-init / influxdb). It reads the same variables the compose
# file hands to InfluxDB, Grafana and the API:
#
#   TELEMETRY_PROFILE      dev (the default: placeholders allowed, with a warning) or anything
#                          else, e.g. production (every secret must be real)
#   INFLUXDB_ADMIN_PASSWORD INFLUXDB_TOKEN GRAFANA_ADMIN_PASSWORD
#   TELEMETRY_READ_KEY TELEMETRY_INGEST_KEY TELEMETRY_ADMIN_KEY TELEMETRY_BRIDGE_SECRET
#
# A secret is a placeholder when it is empty, contains "change-me" (the marker of every default
# in docker-compose.yml and .env.example) or is shorter than 16 characters. The API keys must
# also differ from each other (the API refuses shared keys anyway; this says so before start).
# Exit 0: start; exit 1: refused, with the offending variable names (never their values).
#
# Usage outside compose (tests, CI):  env TELEMETRY_PROFILE=production ... sh docker/preflight.sh
set -eu

profile="${TELEMETRY_PROFILE:-dev}"
min_length=16
secrets="INFLUXDB_ADMIN_PASSWORD INFLUXDB_TOKEN GRAFANA_ADMIN_PASSWORD TELEMETRY_READ_KEY TELEMETRY_INGEST_KEY TELEMETRY_ADMIN_KEY TELEMETRY_BRIDGE_SECRET"

placeholders=""
for name in $secrets; do
    eval "value=\${$name:-}"
    case "$value" in
        *[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]*) placeholders="$placeholders $name" ;;
        *)
            if [ "${#value}" -lt "$min_length" ]; then
                placeholders="$placeholders $name"
            fi
            ;;
    esac
done

shared=""
if [ -n "${TELEMETRY_READ_KEY:-}" ] && {
    [ "${TELEMETRY_READ_KEY:-}" = "${TELEMETRY_INGEST_KEY:-}" ] ||
        [ "${TELEMETRY_READ_KEY:-}" = "${TELEMETRY_ADMIN_KEY:-}" ]
}; then
    shared="yes"
fi
if [ -n "${TELEMETRY_INGEST_KEY:-}" ] && [ "${TELEMETRY_INGEST_KEY:-}" = "${TELEMETRY_ADMIN_KEY:-}" ]; then
    shared="yes"
fi

if [ "$profile" = "dev" ]; then
    if [ -n "$placeholders" ]; then
        echo "preflight: profile dev: placeholder secrets in use (fine on a laptop, never elsewhere):$placeholders"
    fi
    echo "preflight: ok (profile dev)"
    exit 0
fi

status=0
if [ -n "$placeholders" ]; then
    echo "preflight: refusing to start with profile '$profile': placeholder secrets in:$placeholders" >&2
    echo "preflight: set real values (at least $min_length characters, no 'change-me') in .env," >&2
    echo "preflight: e.g. with docker/gen-env.sh > .env, or set TELEMETRY_PROFILE=dev on a laptop" >&2
    status=1
fi
if [ -n "$shared" ]; then
    echo "preflight: refusing to start: TELEMETRY_READ_KEY, TELEMETRY_INGEST_KEY and TELEMETRY_ADMIN_KEY must differ" >&2
    status=1
fi
if [ "$status" -eq 0 ]; then
    echo "preflight: ok (profile $profile)"
fi
exit "$status"
