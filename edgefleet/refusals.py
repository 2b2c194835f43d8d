"""The hub's refusals as sentences an operator reads: a 422's FastAPI list of field errors
becomes one sentence per field (``version: must be at least 1``), never a Python repr.
The API's own 422 JSON stays FastAPI-shaped; the CLI renders it here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_detail"]


def render_detail(detail: Any) -> str:
    """The hub's ``detail`` as sentences: a 422's FastAPI list becomes one per field
    (``version: must be at least 1``), never a Python repr."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        return "; ".join(_field_error(d) for d in detail) or "invalid request"
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {v}" for k, v in detail.items())
    return str(detail)


# pydantic's error types, said as an operator would read them
_PHRASES = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "missing": "is required",
    "string_too_long": "must be at most {max_length} characters",
    "string_too_short": "must be at least {min_length} characters",
    "too_long": "must have at most {max_length} items",
    "too_short": "must have at least {min_length} items",
    "extra_forbidden": "is not a known field",
    "int_parsing": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
}


def _field_error(d: dict[str, Any]) -> str:
    loc = [str(p) for p in d.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or "request"
    ctx = d.get("ctx") or {}
    phrase = _PHRASES.get(str(d.get("type")))
    try:
        text = phrase.format(**ctx) if phrase else None
    except (KeyError, IndexError):
        text = None
    if text is None:
        text = str(d.get("msg", "invalid")).removeprefix("Value error, ")
        text = text[:1].lower() + text[1:]
    return f"{field}: {text}"
