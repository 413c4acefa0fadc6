"""UNet generator G: any input size, interpolation upsampling, optional residual output.

Architecture (``L = len(channel_mults)`` resolution levels, widths ``c_i = base * mult_i``)::

    stem 3x3 conv -> for each level i: res_blocks x ResBlock(c_i) [-> stride-2 conv]
                  -> bottleneck: ResBlock, [self-attention], ResBlock
                  -> for each level i (deepest-1 .. 0): upsample (interp + 3x3 conv) to c_i,
                     concat the level's skip, (res_blocks + 1) x ResBlock (the first merges)
                  -> norm, activation, 3x3 conv -> out_channels
                  [-> + input (residual output)] -> output activation

The input is reflect-padded to a multiple of ``2**(L-1)`` and the output cropped back, so any
``H x W`` works and nothing is ever resized.

Presets (parameter counts for 1 input and 1 output channel):

* ``small`` - CPU demo: base 24, mults (1, 2, 4, 4, 4) (widths 24-96, 4 downsamplings, so a
  16x16 bottleneck at 256 px for a wide receptive field), 1 res block per level, group norm,
  SiLU, no attention: **2,254,705** parameters (``SMALL_PARAMETERS``).
* ``large`` - the ~61M GPU model: base 64, mults (1, 2, 4, 8, 8) (widths 64-512), 2 res
  blocks per level, group norm, SiLU, self-attention at the bottleneck: **60,802,177**
  parameters (``LARGE_PARAMETERS``, 0.3% under 61M).

Both presets upsample bilinearly, have no output activation and no residual output; the
exact counts are checked by the tests.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medi2i.config import GeneratorConfig
from medi2i.models.layers import (
    Downsample,
    ResBlock,
    SelfAttention2d,
    Upsample,
    count_parameters,
    crop_padding,
    make_activation,
    make_norm,
    pad_to_multiple,
)

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATOR_PRESETS",
    "LARGE_PARAMETERS",
    "SMALL_PARAMETERS",
    "GeneratorSpec",
    "UNetGenerator",
    "build_generator",
    "resolve_generator_config",
]

#: Exact parameter counts of the presets (1 input, 1 output channel); tested.
SMALL_PARAMETERS = 2_254_705
LARGE_PARAMETERS = 60_802_177

OUT_ACTIVATIONS = ("none", "sigmoid", "tanh", "clamp")


@dataclass(frozen=True)
class GeneratorSpec:
    """A fully specified generator (every preset value filled in).

    Attributes:
        base_channels: width of the first level.
        channel_mults: width multiplier of each level (finest first).
        res_blocks: residual blocks per level in the encoder; the decoder has one more per level
            (the first merges the upsampled features with the skip connection).
        norm: ``group``, ``instance``, ``batch`` or ``none``.
        activation: ``silu``, ``relu``, ``leaky_relu`` or ``gelu``.
        dropout: dropout probability inside each residual block.
        attention: self-attention at the bottleneck.
        out_activation: ``none``, ``sigmoid``, ``tanh`` or ``clamp``.
        residual_output: return ``input + UNet(input)``.
        upsample: ``bilinear`` or ``nearest`` interpolation before each decoder conv.
    """

    base_channels: int
    channel_mults: tuple[int, ...]
    res_blocks: int
    norm: str
    activation: str
    dropout: float
    attention: bool
    out_activation: str
    residual_output: bool
    upsample: str

    @property
    def downsamplings(self) -> int:
        """Number of times the UNet halves the size (``len(channel_mults) - 1``)."""
        return len(self.channel_mults) - 1

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this (``2**downsamplings``)."""
        return 2**self.downsamplings

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each level."""
        return tuple(self.base_channels * m for m in self.channel_mults)


#: Values each preset gives to the fields a config leaves ``None``.
GENERATOR_PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "base_channels": 24,
        "channel_mults": (1, 2, 4, 4, 4),
        "res_blocks": 1,
        "norm": "group",
        "activation": "silu",
        "dropout": 0.0,
        "attention": False,
        "out_activation": "none",
        "residual_output": False,
        "upsample": "bilinear",
    },
    "large": {
        "base_channels": 64,
        "channel_mults": (1, 2, 4, 8, 8),
        "res_blocks": 2,
        "norm": "group",
        "activation": "silu",
        "dropout": 0.0,
        "attention": True,
        "out_activation": "none",
        "residual_output": False,
        "upsample": "bilinear",
    },
}

_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(GeneratorSpec))


def resolve_generator_config(cfg: GeneratorConfig) -> GeneratorSpec:
    """Fill the fields a :class:`GeneratorConfig` leaves ``None`` from its preset.

    This is the one place where presets are resolved; explicit fields always win.

    Args:
        cfg: the ``model.G`` section.

    Returns:
        The fully specified generator.

    Raises:
        ValueError: with ``preset: custom``, when any field is ``None`` (all are listed).
    """
    given = {name: getattr(cfg, name) for name in _SPEC_FIELDS}
    if cfg.preset == "custom":
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(
                "model.G.preset 'custom' needs every generator field; missing: "
                + ", ".join(missing)
            )
        values = given
    else:
        values = dict(GENERATOR_PRESETS[cfg.preset])
        values.update({name: value for name, value in given.items() if value is not None})
    values["channel_mults"] = tuple(int(m) for m in values["channel_mults"])
    return GeneratorSpec(**values)


class UNetGenerator(nn.Module):
    """UNet generator G (see the module docstring for the layout).

    Args:
        spec: the resolved architecture (:func:`resolve_generator_config`).
        in_channels: input image channels.
        out_channels: output image channels.
        output_range: ``(low, high)`` used by ``out_activation: clamp`` (the data's normalised
            range: ``(0, 1)`` or ``(-1, 1)``).

    Raises:
        ValueError: if ``residual_output`` is asked with ``in_channels != out_channels`` or the
            output activation is unknown.
    """

    def __init__(
        self,
        spec: GeneratorSpec,
        in_channels: int = 1,
        out_channels: int = 1,
        output_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        if spec.residual_output and in_channels != out_channels:
            raise ValueError(
                f"residual_output needs in_channels == out_channels, got {in_channels} and "
                f"{out_channels}"
            )
        if spec.out_activation not in OUT_ACTIVATIONS:
            raise ValueError(
                f"out_activation must be one of {OUT_ACTIVATIONS}, got {spec.out_activation!r}"
            )
        self.spec = spec
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_range = (float(output_range[0]), float(output_range[1]))
        block = {"norm": spec.norm, "activation": spec.activation, "dropout": spec.dropout}
        widths = spec.widths

        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.encoder = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = widths[0]
        for level, width in enumerate(widths):
            blocks = []
            for _ in range(spec.res_blocks):
                blocks.append(ResBlock(prev, width, **block))
                prev = width
            self.encoder.append(nn.Sequential(*blocks))
            if level < len(widths) - 1:
                self.downsamplers.append(Downsample(width, width))

        deepest = widths[-1]
        self.bottleneck = nn.Sequential(
            ResBlock(deepest, deepest, **block),
            SelfAttention2d(deepest, norm=spec.norm) if spec.attention else nn.Identity(),
            ResBlock(deepest, deepest, **block),
        )

        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        prev = deepest
        for width in reversed(widths[:-1]):
            self.upsamplers.append(Upsample(prev, width, mode=spec.upsample))
            blocks = [ResBlock(2 * width, width, **block)]
            blocks += [ResBlock(width, width, **block) for _ in range(spec.res_blocks)]
            self.decoder.append(nn.Sequential(*blocks))
            prev = width

        self.head = nn.Sequential(
            make_norm(spec.norm, widths[0]),
            make_activation(spec.activation),
            nn.Conv2d(widths[0], out_channels, 3, padding=1),
        )
        logger.debug(
            "UNet generator: widths %s, %d res blocks/level, attention %s, %d parameters",
            widths,
            spec.res_blocks,
            spec.attention,
            count_parameters(self),
        )

    @property
    def multiple(self) -> int:
        """Inputs are reflect-padded internally to a multiple of this."""
        return self.spec.multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate a batch of images.

        Args:
            x: ``(N, in_channels, H, W)``, any ``H, W >= 1``.

        Returns:
            ``(N, out_channels, H, W)``.

        Raises:
            ValueError: if ``x`` does not have shape ``(N, in_channels, H, W)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"G expects input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h, pad = pad_to_multiple(x, self.multiple)
        h = self.stem(h)
        skips = []
        for level, blocks in enumerate(self.encoder):
            h = blocks(h)
            if level < len(self.downsamplers):
                skips.append(h)
                h = self.downsamplers[level](h)
        h = self.bottleneck(h)
        for upsample, blocks in zip(self.upsamplers, self.decoder):
            h = blocks(torch.cat([upsample(h), skips.pop()], dim=1))
        out = crop_padding(self.head(h), pad)
        if self.spec.residual_output:
            out = x + out
        return self._activate(out)

    def _activate(self, out: torch.Tensor) -> torch.Tensor:
        kind = self.spec.out_activation
        if kind == "sigmoid":
            return torch.sigmoid(out)
        if kind == "tanh":
            return torch.tanh(out)
        if kind == "clamp":
            return out.clamp(*self.output_range)
        return out


def build_generator(
    cfg: GeneratorConfig,
    in_channels: int = 1,
    out_channels: int = 1,
    output_range: tuple[float, float] = (0.0, 1.0),
) -> UNetGenerator:
    """Build G from its config section (presets resolved by :func:`resolve_generator_config`).

    Args:
        cfg: the ``model.G`` section.
        in_channels: input image channels.
        out_channels: output image channels.
        output_range: the data's normalised range, used by ``out_activation: clamp``.

    Returns:
        The generator.

    Raises:
        ValueError: for an incomplete ``custom`` preset or an impossible combination.
    """
    spec = resolve_generator_config(cfg)
    net = UNetGenerator(spec, in_channels, out_channels, output_range)
    logger.info(
        "G: preset %s, widths %s, %d res blocks/level, attention %s, residual output %s: "
        "%d parameters",
        cfg.preset,
        spec.widths,
        spec.res_blocks,
        spec.attention,
        spec.residual_output,
        count_parameters(net),
    )
    return net
