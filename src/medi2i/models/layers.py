"""Building blocks shared by the generator G and the registration network R.

Everything here is small and generic: normalisation and activation factories, a 3x3 conv block,
a pre-activation residual block, strided-conv downsampling, interpolation + conv upsampling
(never transposed convolutions, whose uneven kernel overlap leaves a checkerboard texture),
spatial self-attention, and the reflect-pad / crop helpers that let a UNet take any input size.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "UPSAMPLE_MODES",
    "ConvBlock",
    "Downsample",
    "Padding",
    "ResBlock",
    "SelfAttention2d",
    "Upsample",
    "count_parameters",
    "crop_padding",
    "make_activation",
    "make_norm",
    "pad_to_multiple",
    "upsample2x",
]

NORMS = ("group", "instance", "batch", "none")
ACTIVATIONS = ("silu", "relu", "leaky_relu", "gelu")
UPSAMPLE_MODES = ("bilinear", "nearest")

#: Most groups a GroupNorm uses (the usual 32); fewer when the channel count is not a multiple.
MAX_GROUPS = 32


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer for ``channels`` feature maps.

    Args:
        kind: ``group`` (GroupNorm with ``gcd(32, channels)`` groups), ``instance``
            (InstanceNorm2d with learned affine), ``batch`` (BatchNorm2d) or ``none`` (identity).
        channels: number of channels normalised.

    Returns:
        The layer.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind == "group":
        return nn.GroupNorm(math.gcd(MAX_GROUPS, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def make_activation(kind: str) -> nn.Module:
    """Activation layer: ``silu``, ``relu``, ``leaky_relu`` (slope 0.2) or ``gelu``.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind == "silu":
        return nn.SiLU()
    if kind == "relu":
        return nn.ReLU()
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if kind == "gelu":
        return nn.GELU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")


class ConvBlock(nn.Sequential):
    """3x3 convolution (optionally strided) followed by normalisation and activation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 1 keeps the size, 2 halves it (even input sizes).
        norm: see :func:`make_norm`.
        activation: see :func:`make_activation`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: str = "none",
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            make_norm(norm, out_channels),
            make_activation(activation),
        )


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(act(norm(conv(act(norm(x))))))``.

    The skip path is a 1x1 convolution when the channel count changes, identity otherwise.
    Dropout (if any) sits between the two convolutions.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: see :func:`make_norm`.
        activation: see :func:`make_activation`.
        dropout: dropout probability in ``[0, 1)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: str = "group",
        activation: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            make_norm(norm, in_channels),
            make_activation(activation),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            make_norm(norm, out_channels),
            make_activation(activation),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: ``(N, in_channels, H, W)``. Returns: ``(N, out_channels, H, W)``."""
        return self.skip(x) + self.body(x)


class Downsample(nn.Module):
    """Halve the spatial size with a learned 3x3 stride-2 convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: ``(N, C, H, W)``, H and W even. Returns: ``(N, out, H/2, W/2)``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double the spatial size by interpolation, then a 3x3 convolution.

    Interpolation + convolution instead of a transposed convolution: the latter's kernels
    overlap unevenly when the stride does not divide the kernel size, which prints a
    checkerboard onto the output (seen in the pix2pix reference outputs on this data).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        mode: ``bilinear`` (``align_corners=False``) or ``nearest``.

    Raises:
        ValueError: for an unknown ``mode``.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "bilinear") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
        self.mode = mode
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: ``(N, C, H, W)``. Returns: ``(N, out, 2H, 2W)``."""
        return self.conv(upsample2x(x, self.mode))


def upsample2x(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Double the last two dims by interpolation (no parameters).

    Args:
        x: ``(N, C, H, W)`` tensor.
        mode: ``bilinear`` (``align_corners=False``: pixel centres, no edge bias) or ``nearest``.

    Returns:
        ``(N, C, 2H, 2W)``.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    if mode == "bilinear":
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    if mode == "nearest":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    raise ValueError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian filter of every channel, same size, border values replicated.

    Args:
        x: ``(N, C, H, W)`` tensor.
        sigma: standard deviation in pixels (> 0).
        truncate: the kernel's radius is ``ceil(truncate * sigma)`` pixels.

    Returns:
        The filtered tensor, ``(N, C, H, W)``; differentiable.

    Raises:
        ValueError: if ``sigma <= 0`` or ``x`` is not 4-D.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got {tuple(x.shape)}")
    radius = max(1, math.ceil(truncate * sigma))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    # every image and channel as a channel of one depthwise convolution: on the CPU a batch
    # of single-channel images convolved as such runs several times slower
    n, c, h, w = x.shape
    groups = n * c
    rows = kernel.view(1, 1, -1, 1).expand(groups, 1, -1, 1)
    cols = kernel.view(1, 1, 1, -1).expand(groups, 1, 1, -1)
    y = x.reshape(1, groups, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), rows, groups=groups)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), cols, groups=groups)
    return y.reshape(n, c, h, w)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over all positions of a feature map, with a residual.

    ``x + proj(attention(q, k, v))`` where ``q, k, v`` are 1x1 projections of ``norm(x)``.
    Uses :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused,
    memory-efficient kernel where one exists (cost still grows with ``(H*W)^2``, so it belongs
    at a low-resolution bottleneck).

    Args:
        channels: feature channels (must be divisible by ``heads``).
        heads: attention heads; ``None`` = ``max(1, channels // 64)``, rounded down to a divisor.
        norm: normalisation before the projections (see :func:`make_norm`).

    Raises:
        ValueError: if ``channels`` is not divisible by ``heads``.
    """

    def __init__(self, channels: int, heads: int | None = None, norm: str = "group") -> None:
        super().__init__()
        if heads is None:
            heads = max(1, channels // 64)
            while channels % heads:
                heads -= 1
        if heads < 1 or channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = make_norm(norm, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: ``(N, C, H, W)``. Returns: the same shape."""
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        # (N, heads, tokens, head_dim) for q, k and v
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(dim=1))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)


class Padding(NamedTuple):
    """Pixels added on each side by :func:`pad_to_multiple` (``F.pad`` order)."""

    left: int
    right: int
    top: int
    bottom: int


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Padding]:
    """Pad the last two dims so both become multiples of ``multiple`` (never resizes).

    The padding is split evenly between the two sides (the extra pixel, if odd, goes after) and
    mirrors the image (``reflect``). Reflection needs the pad to be smaller than the side; for a
    tiny image that is not the case, and the border pixel is replicated instead.

    Args:
        x: ``(N, C, H, W)`` tensor.
        multiple: the required divisor (e.g. ``2**downsamplings`` of a UNet), >= 1.

    Returns:
        ``(padded, padding)``; undo with :func:`crop_padding`.

    Raises:
        ValueError: if ``x`` is not 4D or ``multiple < 1``.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    pad = Padding(pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph == 0 and pw == 0:
        return x, pad
    mode = (
        "reflect" if max(pad.top, pad.bottom) < h and max(pad.left, pad.right) < w else "replicate"
    )
    return F.pad(x, tuple(pad), mode=mode), pad


def crop_padding(x: torch.Tensor, pad: Padding) -> torch.Tensor:
    """Remove the padding added by :func:`pad_to_multiple` (works for any channel count).

    Args:
        x: ``(N, C, H + top + bottom, W + left + right)`` tensor.
        pad: the padding returned by :func:`pad_to_multiple`.

    Returns:
        ``(N, C, H, W)`` view of ``x``.
    """
    h, w = x.shape[-2:]
    return x[..., pad.top : h - pad.bottom, pad.left : w - pad.right]


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
