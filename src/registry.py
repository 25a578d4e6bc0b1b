"""Name -> entry registries (models, datasets, criteria, growth rules): one idiom, one error.

    CRITERIA = Registry("criterion")

    @CRITERIA.register("magnitude")
    def magnitude(...): ...

    CRITERIA.get("magnitude")        # the entry; ValueError "unknown criterion 'x'; choose from [...]"
    CRITERIA.list("snip*")           # sorted names, filtered like timm's list_models

A registry is a read-only-by-convention dict, so `name in R`, `R[name]`, `sorted(R)` work too.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any


def unknown(kind: str, value: Any, allowed) -> ValueError:
    """The one error for a name that is not among the allowed ones (registries, config fields)."""
    hint = suggest(str(value), allowed, quote=True)
    return ValueError(f"unknown {kind} {value!r}; choose from {list(allowed)}" + (f"; {hint}" if hint else ""))


def suggest(given: str, allowed, prefix: str = "", quote: bool = False) -> str:
    """`did you mean X?` for the close matches of `given` among `allowed`, else ''."""
    matches = difflib.get_close_matches(given, [str(a) for a in allowed], n=3, cutoff=0.6)
    if not matches:
        return ""
    return "did you mean " + " or ".join(repr(m) if quote else f"{prefix}{m}" for m in matches) + "?"


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, entry: Any = None, *, wrap: Callable[[Any], Any] | None = None):
        """Register ``entry`` under ``name``; without ``entry``, a decorator that registers
        ``wrap(obj)`` (or ``obj`` itself) and returns ``obj`` unchanged."""
        if entry is not None:
            self._add(name, entry)
            return entry

        def decorator(obj):
            self._add(name, obj if wrap is None else wrap(obj))
            return obj

        return decorator

    def _add(self, name: str, entry: Any) -> None:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry

    def get(self, name: str) -> Any:  # type: ignore[override]  # noqa: D102  (unlike dict.get: no default, a clear error)
        if name not in self:
            raise unknown(self.kind, name, self.list())
        return self[name]

    def list(self, filter: str | None = None, where: Callable[[Any], bool] | None = None) -> list[str]:
        """Sorted names, optionally matching the wildcard ``filter`` and whose entry passes ``where``."""
        return sorted(
            n for n, e in self.items() if (filter is None or fnmatch.fnmatch(n, filter)) and (where is None or where(e))
        )
