"""The hub's side of MQTT: the broker and its configuration, and the links to devices.

- link.py: the paho link (connect, publish, acknowledge); inbound.py: what becomes of each
  device message (fetch answers, reports to ingest, captures); decode.py: the one decoder.
- fetch.py: answers to fetches; commands.py: director-signed commands.
- fastsub.py: the subscribe-only client of the ingest workers (ADR 0009).
- broker.py: a local Mosquitto (or amqtt) and broker addresses; brokerconf.py: the
  production Mosquitto configuration (TLS, ACL, CRL).
"""
