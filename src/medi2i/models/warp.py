"""The warp layer: backward resampling of images by displacement fields in pixels.

Displacement convention (the same as :mod:`medi2i.data.deform` and MONAI's ``Warp``):

* a field ``disp`` has shape ``(N, 2, H, W)`` and is in **pixels**; channel 0 is the row
  component ``dy``, channel 1 the column component ``dx``;
* warping is **backward**: ``out[n, :, y, x] = image[n, :, y + dy, x + dx]`` sampled bilinearly,
  so a constant ``dx = +3`` moves the content 3 pixels to the left;
* pixel ``i`` sits at coordinate ``i`` (pixel centres on the integer grid: the ``align_corners=
  True`` convention of :func:`torch.nn.functional.grid_sample`, and that of ``scipy.ndimage``),
  and samples outside the image take the nearest border value (``padding_mode="border"``, like
  ``scipy.ndimage`` with ``mode="nearest"``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Warp", "warp"]


def warp(image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``image`` by a displacement field in pixels (see the module docstring).

    Bilinear interpolation of the four neighbours of ``(y + dy, x + dx)``, with the sampling
    position clamped to the image (border padding: the same values and gradients as
    ``grid_sample(..., padding_mode="border", align_corners=True)`` and MONAI's ``Warp``).

    Why not ``monai.networks.blocks.Warp`` or ``grid_sample`` directly (the tests check that
    they agree to 1e-5): both go through normalised ``[-1, 1]`` coordinates in the image's
    dtype, and converting pixel positions there and back in float32 shifts every sample by up to
    about ``size * 6e-8`` px, so a zero field is not an exact identity (errors of ~7e-6 on a
    64-px image, more on larger ones). MONAI's ``Warp`` also builds its grid in the field's
    dtype, so a bfloat16/float16 field from an autocast region puts positions such as 200.3 on
    a grid with a spacing of 1 px (the warp is then wrong by pixels), and it caches that grid by
    shape only (stale after a change of device or dtype). Here positions stay in pixels, are
    always computed in float32 (float64 if an input is float64) with autocast disabled, and a
    zero or integer field reproduces the input or its shift exactly. It costs four gathers
    instead of one fused kernel, negligible beside the networks.

    Args:
        image: ``(N, C, H, W)`` tensor to resample.
        disp: ``(N, 2, H, W)`` displacement in pixels, channel 0 = rows (``dy``), channel 1 =
            columns (``dx``); any floating dtype.

    Returns:
        The warped image, ``(N, C, H, W)``, float32 (float64 if an input was float64).
        Differentiable with respect to both ``image`` and ``disp``. Pixels whose displacement
        is NaN are NaN (an infinite one samples the border).

    Raises:
        ValueError: if the shapes do not match.
    """
    if image.ndim != 4:
        raise ValueError(f"image must have shape (N, C, H, W), got {tuple(image.shape)}")
    n, c, h, w = image.shape
    if tuple(disp.shape) != (n, 2, h, w):
        raise ValueError(
            f"disp must have shape (N, 2, H, W) = {(n, 2, h, w)} to match the image "
            f"{tuple(image.shape)}, got {tuple(disp.shape)}"
        )
    dtype = torch.float64 if torch.float64 in (image.dtype, disp.dtype) else torch.float32
    with torch.autocast(device_type=image.device.type, enabled=False):
        field = disp.to(dtype)
        rows = torch.arange(h, device=image.device, dtype=dtype).view(1, h, 1)
        cols = torch.arange(w, device=image.device, dtype=dtype).view(1, 1, w)
        # Border padding = clamp the sampling position (zero gradient outside, as grid_sample).
        pos_y = (rows + field[:, 0]).clamp(0, h - 1)
        pos_x = (cols + field[:, 1]).clamp(0, w - 1)
        # A NaN displacement (a diverging R) must not crash the indexing below: its neighbour
        # index becomes 0 while its weight stays NaN, so the warped pixel is NaN and the
        # step's non-finite check skips the update, as for any other non-finite loss.
        y0 = torch.nan_to_num(pos_y.detach(), nan=0.0).floor()
        x0 = torch.nan_to_num(pos_x.detach(), nan=0.0).floor()
        wy = (pos_y - y0).unsqueeze(1)  # (N, 1, H, W) weights of the lower/right neighbours
        wx = (pos_x - x0).unsqueeze(1)
        y0, x0 = y0.long(), x0.long()
        y1 = (y0 + 1).clamp(max=h - 1)
        x1 = (x0 + 1).clamp(max=w - 1)
        flat = image.to(dtype).reshape(n, c, h * w)

        def pick(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
            index = (yi * w + xi).reshape(n, 1, h * w).expand(n, c, h * w)
            return flat.gather(2, index).reshape(n, c, h, w)

        top = pick(y0, x0) * (1 - wx) + pick(y0, x1) * wx
        bottom = pick(y1, x0) * (1 - wx) + pick(y1, x1) * wx
        return top * (1 - wy) + bottom * wy


class Warp(nn.Module):
    """Module form of :func:`warp` (bilinear, border padding, no parameters)."""

    def forward(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """Args: image ``(N, C, H, W)``, disp ``(N, 2, H, W)`` in pixels. Returns: warped."""
        return warp(image, disp)
