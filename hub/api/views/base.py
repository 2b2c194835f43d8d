"""The base of every response model: pure pydantic, read by attribute or as a mapping.

A route's answer and the client's return value are the same class (docs/client.md,
docs/adr/0029-typed-client-from-shared-views.md). ``View`` keeps fields the model does
not declare (``extra="allow"``), so a route never loses a field a view forgot; ``Exact``
drops them, for a view that stands in front of a table row with columns that must never
leave the hub (a key's hash, a token's hash).

A view reads like the dict the API used to return: ``v["status"]``, ``v.get("x")``,
``"k" in v``, ``dict(v)``, ``list(v)`` (the keys), ``v.items()``. The keys are the fields
the answer carried (``model_fields_set``: what the hub sent, or what the route set), in
declaration order, then the extra ones; a declared field the hub left out reads as its
default by attribute and is absent as a key, as it was from the dict. Iterating a view
yields its keys, as a dict's iteration does, not pydantic's (name, value) pairs. A view
equals a mapping with the same keys and values.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Exact", "View"]


class View(BaseModel, Mapping[str, Any]):
    """A response model, read-only as a mapping over the fields the answer carried."""

    model_config = ConfigDict(from_attributes=True, extra="allow")

    def _keys(self) -> list[str]:
        given = self.model_fields_set
        declared = [k for k in type(self).model_fields if k in given]
        return declared + [k for k in (self.__pydantic_extra__ or {}) if k not in declared]

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self._keys() else default

    def keys(self) -> KeysView[str]:
        return self._as_dict().keys()

    def values(self) -> ValuesView[Any]:
        return self._as_dict().values()

    def items(self) -> ItemsView[str, Any]:
        return self._as_dict().items()

    def __contains__(self, key: object) -> bool:
        return key in self._keys()

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # keys, as a dict
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping) and not isinstance(other, BaseModel):
            return self._as_dict() == dict(other)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def _as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._keys()}


class Exact(View):
    """A view that keeps only its declared fields (in front of a table row)."""

    model_config = ConfigDict(from_attributes=True, extra="ignore")
