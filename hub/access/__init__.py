"""Who may call the hub and what they did: API keys with roles (keys.py) and the audit
log's storage (audit.py). The HTTP side of both is in hub/api (security.py, audit.py)."""
