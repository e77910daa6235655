"""The local launcher: ``telemetry-stack`` runs the whole pipeline on one machine from installed
binaries. :mod:`~telemetry_stack.stack` brings it up step by step, :mod:`~telemetry_stack.state`
keeps ``stack.json``, :mod:`~telemetry_stack.supervisor` stops, restarts and checks its services
by PID, :mod:`~telemetry_stack.servers` starts server processes (also for the test fixtures).
What a deployment is provisioned with (PKI, broker configuration) lives in :mod:`provisioning`."""
