"""Number formatting (medi2i.utils.formatting): significant digits with a placeholder, and the
fixed-width compact form of the epoch line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medi2i.utils.formatting import compact, significant


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (31.234567, 4, "31.23"),
        (0.5, 3, "0.5"),  # trailing zeros dropped
        (123456.0, 4, "1.235e+05"),  # exponent form from 10**digits up
        (1234.5, 4, "1234"),  # round half to even on the binary value
        (999.95, 4, "1000"),  # rounding carries into a new digit
        (0.00012345, 3, "0.000123"),
        (0.000012345, 3, "1.23e-05"),  # exponent form below 1e-4
        (0.0, 4, "0"),
        (-2.0, 6, "-2"),
        (7, 4, "7"),  # ints format like floats
        (np.float32(0.1), 6, "0.1"),  # numpy scalars
        (math.nan, 4, "nan"),  # non-finite numbers are shown, never hidden
        (-math.inf, 4, "-inf"),
    ],
)
def test_significant(value, digits, expected):
    assert significant(value, digits) == expected


def test_significant_placeholder_sign_and_digits():
    assert significant(None, 4) == "n/a"
    assert significant(None, 4, missing="-") == "-"
    assert significant(0.25, 4, signed=True) == "+0.25"
    assert significant(-0.25, 4, signed=True) == "-0.25"
    assert significant(0.0, 4, signed=True) == "+0"
    assert significant(None, 4, signed=True) == "n/a"
    with pytest.raises(ValueError, match="digits"):
        significant(1.0, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (0.532, "0.532"),
        (0.5, "0.500"),  # trailing zeros kept: the width stays
        (0.0012, "0.001"),
        (0.0005, "5.00e-04"),
        (3.1, "3.10"),
        (-2.0, "-2.00"),
        (9.999, "10.00"),  # rounds up within the [1, 10) rule
        (28.44, "28.4"),
        (9999.0, "9999.0"),
        (12345, "1.23e+04"),
        (math.nan, "nan"),
        (-math.inf, "-inf"),
        ("psnr_mask", "psnr_mask"),  # not a number: as text
        (None, "None"),
    ],
)
def test_compact(value, expected):
    assert compact(value) == expected
