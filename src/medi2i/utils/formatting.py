"""Numbers as text, for log lines, console lines, tables and CSV cells.

Two renderings, for two different needs:

* :func:`significant` - a number to ``digits`` significant digits in Python's ``g`` format
  (trailing zeros dropped, exponent form below 1e-4 and from ``10**digits`` up); an absent value
  (None) becomes a placeholder. Messages, tables and CSV cells use it.
* :func:`compact` - about three significant digits in fixed notation with trailing zeros kept
  (``0.500``, ``3.10``, ``28.4``, exponent form below 1e-3 and from 1e4 up), so that the
  numbers of a line repeated every epoch or step keep their width.

Rules: standard library only. Non-finite numbers are never hidden: both render NaN and
infinities as ``nan``, ``inf`` and ``-inf``; the placeholder stands only for a missing value.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["compact", "significant"]


def significant(
    value: float | None, digits: int, *, signed: bool = False, missing: str = "n/a"
) -> str:
    """``value`` to ``digits`` significant digits (``format(value, ".{digits}g")``).

    Args:
        value: a number (Python, numpy), or None for a missing value.
        digits: significant digits, >= 1.
        signed: always show the sign (``+0.25``), for differences.
        missing: the text for None.

    Returns:
        For example ``significant(31.234567, 4) == "31.23"``,
        ``significant(0.5, 3) == "0.5"``, ``significant(123456.0, 4) == "1.235e+05"``,
        ``significant(None, 4) == "n/a"``, ``significant(float("nan"), 4) == "nan"``.

    Raises:
        ValueError: if ``digits < 1``.
    """
    if digits < 1:
        raise ValueError(f"significant: digits must be >= 1, got {digits}")
    if value is None:
        return missing
    return format(value, f"{'+' if signed else ''}.{digits}g")


def compact(value: Any) -> str:
    """About three significant digits in fixed notation; anything not a number as ``str``.

    ``0`` -> ``0``; magnitudes in [1e-3, 1) -> three decimals (``0.532``), [1, 10) -> two
    (``3.10``), [10, 1e4) -> one (``28.4``), others -> ``2.50e-04`` / ``1.23e+05``.
    """
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e4 or a < 1e-3:
        return f"{x:.2e}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"
