"""The bridge: a persistent, shared MQTT 5 subscription that acknowledges only stored messages."""
