"""Values made writable as strict JSON (which has no NaN or infinity)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` with every part JSON can hold as it is, and the rest converted.

    Mappings and sequences are converted item by item; a 0-d tensor or numpy scalar becomes its
    Python number; a non-finite float becomes ``None`` (``null``); a path becomes its string;
    anything else JSON cannot hold becomes its ``str``.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()  # 0-d torch tensor or numpy scalar
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return str(value)
