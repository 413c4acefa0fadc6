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

__all__ = ["Warp", "warp", "warp_with_jacobian"]


def _check_shapes(image: torch.Tensor, disp: torch.Tensor) -> None:
    if image.ndim != 4:
        raise ValueError(f"image must have shape (N, C, H, W), got {tuple(image.shape)}")
    n, _, h, w = image.shape
    if tuple(disp.shape) != (n, 2, h, w):
        raise ValueError(
            f"disp must have shape (N, 2, H, W) = {(n, 2, h, w)} to match the image "
            f"{tuple(image.shape)}, got {tuple(disp.shape)}"
        )


def _bilinear(image: torch.Tensor, disp: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pieces of a bilinear backward warp, in float32 (float64 if an input is float64).

    Returns the four neighbours' values ``p00, p01, p10, p11`` (row offset first), the weights
    ``wy, wx`` of the lower and right neighbours (``(N, 1, H, W)``, differentiable with respect
    to ``disp``) and the unclamped positions ``pos_y, pos_x`` (``(N, H, W)``). Autocast must be
    off around the call.
    """
    n, c, h, w = image.shape
    dtype = torch.float64 if torch.float64 in (image.dtype, disp.dtype) else torch.float32
    field = disp.to(dtype)
    rows = torch.arange(h, device=image.device, dtype=dtype).view(1, h, 1)
    cols = torch.arange(w, device=image.device, dtype=dtype).view(1, 1, w)
    raw_y, raw_x = rows + field[:, 0], cols + field[:, 1]
    # Border padding = clamp the sampling position (zero gradient outside, as grid_sample).
    pos_y, pos_x = raw_y.clamp(0, h - 1), raw_x.clamp(0, w - 1)
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

    return {
        "p00": pick(y0, x0),
        "p01": pick(y0, x1),
        "p10": pick(y1, x0),
        "p11": pick(y1, x1),
        "wy": wy,
        "wx": wx,
        "pos_y": raw_y,
        "pos_x": raw_x,
    }


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
    _check_shapes(image, disp)
    with torch.autocast(device_type=image.device.type, enabled=False):
        b = _bilinear(image, disp)
        top = b["p00"] * (1 - b["wx"]) + b["p01"] * b["wx"]
        bottom = b["p10"] * (1 - b["wx"]) + b["p11"] * b["wx"]
        return top * (1 - b["wy"]) + bottom * b["wy"]


@torch.no_grad()
def warp_with_jacobian(
    image: torch.Tensor, disp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`warp` and its derivative with respect to the displacement, without autograd.

    Each warped pixel depends on its own displacement only, so the derivative is a per-pixel
    ``(N, C, 2, H, W)`` tensor: ``d out[n, c, y, x] / d disp[n, k, y, x]``. The gradient of a
    loss ``L(out)`` with respect to the field is then ``(dL/dout).unsqueeze(2) * jac`` summed
    over channels. This is what :func:`warp`'s autograd computes (the tests compare them), in
    fewer, simpler operations: an optimiser that fits a field to a fixed image (the fitted
    registration) needs nothing else, and building and running autograd's graph at every
    iteration cost it about 40% of its time on a CPU.

    Conventions as :func:`warp`: where the position is clamped to the border the derivative
    along that axis is 0 (on the border itself it is the one-sided difference inwards).

    Args:
        image: ``(N, C, H, W)`` tensor to resample (not differentiated).
        disp: ``(N, 2, H, W)`` displacement in pixels.

    Returns:
        ``(warped, jac)``: the warped image ``(N, C, H, W)`` and ``jac`` ``(N, C, 2, H, W)``,
        channel 0 of the third axis along rows, 1 along columns; float32 (float64 if an input
        was float64).

    Raises:
        ValueError: if the shapes do not match.
    """
    _check_shapes(image, disp)
    h, w = image.shape[-2:]
    with torch.autocast(device_type=image.device.type, enabled=False):
        b = _bilinear(image, disp)
        wy, wx = b["wy"], b["wx"]
        left, right = b["p01"] - b["p00"], b["p11"] - b["p10"]
        top = b["p00"] + left * wx
        bottom = b["p10"] + right * wx
        warped = top + (bottom - top) * wy
        inside_y = ((b["pos_y"] >= 0) & (b["pos_y"] <= h - 1)).unsqueeze(1)
        inside_x = ((b["pos_x"] >= 0) & (b["pos_x"] <= w - 1)).unsqueeze(1)
        d_dy = (bottom - top) * inside_y
        d_dx = (left + (right - left) * wy) * inside_x
        return warped, torch.stack([d_dy, d_dx], dim=2)


class Warp(nn.Module):
    """Module form of :func:`warp` (bilinear, border padding, no parameters)."""

    def forward(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """Args: image ``(N, C, H, W)``, disp ``(N, 2, H, W)`` in pixels. Returns: warped."""
        return warp(image, disp)
