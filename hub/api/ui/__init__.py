"""The operator's dashboard at ``/ui`` (docs/dashboard.md, docs/adr/0023-dashboard.md).

Static HTML, CSS and ES-module JavaScript in ``static/`` (no build step, no CDN), read
from the JSON API with a session cookie: :mod:`hub.api.ui.sessions` signs operators in
with their API key and checks the CSRF token of every change; :mod:`hub.api.ui.routes`
serves the pages and the sign-in; :mod:`hub.api.ui.headers` puts the Content-Security-
Policy on them. The package imports nothing at import time, so hub/api/security.py can
use the sessions without a cycle.
"""
