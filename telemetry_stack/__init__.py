"""Runs the charger-telemetry stack locally: a dev PKI, Mosquitto and InfluxDB configuration,
managed server processes and the ``telemetry-stack`` command."""
