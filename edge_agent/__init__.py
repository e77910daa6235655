"""The gateway side: sources -> durable SQLite outbox -> MQTT 5 publisher (delete after PUBACK)."""
