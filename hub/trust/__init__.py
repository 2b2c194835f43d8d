"""What devices trust on the hub: signed metadata and device identities.

- repository.py is the TUF repository that signs the model list and the director's keys
  (roles.py: roles, key plans, lifetimes; keystore.py: the private key files).
- pki.py is the certificate authority for MQTT over TLS; identities.py issues and revokes
  device certificates and publishes the CRL; enrolment.py keeps the one-time tokens a
  device enrols with.
"""
