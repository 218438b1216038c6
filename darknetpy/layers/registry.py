"""Section name (and Darknet's aliases) -> layer class. Filled by `@register` in each layer module."""
from __future__ import annotations

from ..errors import CfgError

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    for name in (cls.kind, *cls.aliases):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise RuntimeError(f"section name [{name}] registered twice")
        REGISTRY[name] = cls
    return cls


def layer_class(name: str, path: str | None = None, line: int | None = None) -> type:
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean [{close[0]}]?" if close else ""
        raise CfgError(f"unknown section [{name}]{hint}", path, line) from None
