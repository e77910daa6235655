"""OCPP 2.0.1 beside 1.6J (docs/ocpp.md#ocpp-201): the same readings and session fields.

models.py     TransactionEvent, MeterValues, StatusNotification, BootNotification payloads
translate.py  Translator201: 2.0.1 requests -> Captures, on the shared 1.6 Translator
session.py    ChargerSession201: local mode (the gateway answers as the CSMS)
tap.py        Tap201: telemetry out of raw 2.0.1 frames (proxy mode; pure)
"""
