"""What the request models of several route modules share: bounds and patterns."""

from __future__ import annotations

MAX_INT = 2**31 - 1  # the largest version, seed or count a request may carry

# A device id or a model name in a path or query: letters and digits, then also _ . -
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A device tag (a group), which may also hold ':'
TAG = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
