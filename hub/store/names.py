"""What names and numbers the hub accepts from an operator: one rule for the API's paths
and bodies and for a fleet file (hub/declared/)."""

from __future__ import annotations

MAX_INT = 2**31 - 1  # the largest version, seed or count a request may carry

# A model name in a path or query: a letter or digit, then up to 63 of them or _ . -
MODEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DEVICE = MODEL  # a device id in a path, by the same rule
TAG = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # a device tag (a group): ':' allowed too
