"""What a deployment of charger-telemetry is provisioned with, by docker compose's pki-init and
by ``telemetry-stack up`` alike: the PKI (:mod:`provisioning.pki`), the broker's configuration
(:mod:`provisioning.broker_config`) and the bridges' session secret
(:mod:`provisioning.bridge_session`). Pure file makers: nothing here starts a process."""
