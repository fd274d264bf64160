"""The generic checks of user values: each returns the value or raises ``UserError`` with one
line that names the key the user typed and what is valid. Every domain validates its own
options with these (``FVSettings.from_config`` in FV, the transforms' grammar in
``ifv.math.transform``, the solvers' options beside the solvers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ifv.errors import UserError


def choice(key: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else a ``UserError`` that lists them."""
    if not isinstance(value, str) or value not in valid:
        raise UserError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
    return value


def count(key: str, value: Any, low: int = 0) -> int:
    """An integer >= ``low`` (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def number(key: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    """A finite number >= ``low`` (> ``low`` with ``strict``)."""
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and math.isfinite(value) and (value > low if strict else value >= low))
    if not ok:
        raise UserError(f"{key} must be a finite number {'>' if strict else '>='} {low:g}, "
                        f"got {value!r}")
    return float(value)


def share(key: str, value: Any) -> float:
    """A number in [0, 1]."""
    if number(key, value) > 1:
        raise UserError(f"{key} must be a number in [0, 1], got {value!r}")
    return float(value)


def plain(node: Any) -> Any:
    """A config node as plain Python values (lists, dicts, scalars)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node
