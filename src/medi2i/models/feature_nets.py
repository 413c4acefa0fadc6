"""Frozen feature networks of G's perceptual loss: ImageNet VGG16 / VGG19 and a trained D.

VGG (:class:`VGGFeatures`). The ``features`` stack of torchvision's VGG16 (configuration ``D``)
or VGG19 (``E``), built here with torchvision's exact layer indexing so that the keys
``features.<i>.weight`` / ``features.<i>.bias`` of torchvision's ImageNet files
(``vgg16-397923af.pth``, ``vgg19-dcbb9e9d.pth``; :data:`medi2i.config.PERCEPTUAL_WEIGHT_FILES`)
load as they are. Each number of the configuration is a 3x3 convolution (padding 1) followed by
a ReLU (not in place, so the activation handed out is not overwritten), each ``M`` a 2x2 max
pooling with stride 2::

    vgg16: 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M
    vgg19: 64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M

Layers are named by block and convolution, ``relu<block>_<conv>`` (``relu1_1`` is index 1,
``relu1_2`` index 3, ``relu2_1`` index 6, ...: :func:`vgg_layer_indices`); only the stack up to
the deepest requested layer is built. Defaults (:data:`VGG_DEFAULT_LAYERS`): ``relu1_2,
relu2_2, relu3_3, relu4_3`` (vgg16), ``relu1_2, relu2_2, relu3_4, relu4_4`` (vgg19).

VGG input (:func:`imagenet_input`). An image in the data's output range ``[lo, hi]``
(``data.normalization.output_range``) is mapped to ``[0, 1]`` by ``(x - lo) / (hi - lo)``,
a single channel is replicated to 3, then ImageNet's normalisation applies per channel:
``(x - mean) / std`` with mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``.

Discriminator (:class:`DiscriminatorFeatures`). A trained, unconditional D of a previous medi2i
run: its features are the intermediate feature maps of every scale, finest scale first, on the
image as it is (D has its own front end, e.g. the detail band; no ImageNet normalisation).

Both networks are frozen: parameters without gradients, and evaluation mode that ``train()``
does not change (no dropout or batch norm here, and D's spectral normalisation keeps its power
iteration still). Reading the weights from files, with errors naming the file, is
:mod:`medi2i.losses.perceptual`; :func:`vgg_weight_problems` checks a state dict against the
whole network, so that e.g. a VGG19 file given as vgg16 is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medi2i.models.discriminator import MultiScaleDiscriminator

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG_CONFIGS",
    "VGG_DEFAULT_LAYERS",
    "DiscriminatorFeatures",
    "VGGFeatures",
    "imagenet_input",
    "vgg_layer_indices",
    "vgg_weight_problems",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet images in [0, 1] (RGB), which torchvision's VGGs expect."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet images in [0, 1] (RGB)."""

_POOL = "M"


def _layout(text: str) -> tuple[int | str, ...]:
    return tuple(item if item == _POOL else int(item) for item in text.split())


VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": _layout("64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M"),
    "vgg19": _layout("64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M"),
}
"""torchvision's VGG configurations ``D`` (vgg16) and ``E`` (vgg19): output channels of each
3x3 convolution, ``M`` a 2x2 max pooling."""

VGG_DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "vgg16": ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
    "vgg19": ("relu1_2", "relu2_2", "relu3_4", "relu4_4"),
}
"""The layers compared when ``loss.perceptual.layers`` is null."""


def _vgg_config(network: str) -> tuple[int | str, ...]:
    if network not in VGG_CONFIGS:
        raise ValueError(f"unknown VGG network {network!r}; choose one of {sorted(VGG_CONFIGS)}")
    return VGG_CONFIGS[network]


def _vgg_convolutions(network: str) -> list[tuple[int, int, int]]:
    """``(index in features, in_channels, out_channels)`` of each convolution of the stack."""
    convs, index, channels = [], 0, 3
    for item in _vgg_config(network):
        if item == _POOL:
            index += 1
        else:
            convs.append((index, channels, int(item)))
            channels = int(item)
            index += 2  # the convolution and its ReLU
    return convs


def vgg_layer_indices(network: str) -> dict[str, int]:
    """Each ReLU's name and its index in the ``features`` stack (torchvision's indexing).

    Args:
        network: ``vgg16`` or ``vgg19``.

    Returns:
        ``{"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, ...}`` in the order of the stack.

    Raises:
        ValueError: an unknown network.
    """
    names, block, conv, index = {}, 1, 0, 0
    for item in _vgg_config(network):
        if item == _POOL:
            block, conv, index = block + 1, 0, index + 1
        else:
            conv += 1
            names[f"relu{block}_{conv}"] = index + 1
            index += 2
    return names


def vgg_weight_problems(
    state_dict: Mapping[str, Any], network: str, built: nn.Module | None = None
) -> list[str]:
    """What keeps a (torchvision) state dict from being the ``features`` of ``network``.

    Keys outside ``features.`` (torchvision's ``classifier.*``) are ignored. Every
    ``features.*`` key must be a convolution's ``weight`` or ``bias`` of the whole stack, with
    its shape; every key of ``built`` (the part of the stack in use; default the whole stack)
    must be present. A file of the other VGG fails: their convolutions sit at other indices.

    Args:
        state_dict: the file's contents.
        network: ``vgg16`` or ``vgg19``.
        built: a :class:`VGGFeatures` whose keys must all be present (None: every key of the
            whole stack).

    Returns:
        One line per problem (``missing key``, ``unexpected key``, ``shape mismatch``, ``not a
        tensor``); empty when the weights fit.
    """
    expected: dict[str, tuple[int, ...]] = {}
    for index, cin, cout in _vgg_convolutions(network):
        expected[f"features.{index}.weight"] = (cout, cin, 3, 3)
        expected[f"features.{index}.bias"] = (cout,)
    required = list(expected) if built is None else list(built.state_dict())
    problems = [
        f"missing key: {k} (expected shape {expected[k]})" for k in required if k not in state_dict
    ]
    for key, value in state_dict.items():
        if not str(key).startswith("features."):
            continue
        if key not in expected:
            problems.append(f"unexpected key: {key} ({network} has no parameter there)")
        elif not isinstance(value, torch.Tensor):
            problems.append(f"not a tensor: {key} ({type(value).__name__})")
        elif tuple(value.shape) != expected[key]:
            problems.append(
                f"shape mismatch: {key}: file {tuple(value.shape)} vs {network} {expected[key]}"
            )
    return problems


def imagenet_input(x: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    """An image in ``input_range`` as ImageNet VGG input: ``[0, 1]``, 3 channels, normalised.

    ``((x - lo) / (hi - lo) - mean) / std`` per channel, a single channel replicated to 3.

    Args:
        x: ``(N, 1, H, W)`` or ``(N, 3, H, W)`` images in ``[lo, hi]``.
        input_range: ``(lo, hi)``, the data's output range.

    Returns:
        ``(N, 3, H, W)`` in ``x``'s dtype.

    Raises:
        ValueError: another number of channels, or ``hi <= lo``.
    """
    lo, hi = (float(v) for v in input_range)
    if not hi > lo:
        raise ValueError(f"input_range must have hi > lo, got {input_range}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"VGG input must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    unit = (x - lo) / (hi - lo)
    if unit.shape[1] == 1:
        unit = unit.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (unit - mean) / std


class _Frozen(nn.Module):
    """A module that stays in evaluation mode and whose parameters take no gradient."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Frozen:
        """Stay in evaluation mode whatever ``mode`` asks (the network is frozen)."""
        return super().train(False)


class VGGFeatures(_Frozen):
    """torchvision's VGG ``features`` stack up to the deepest requested ReLU; frozen.

    Random weights until a torchvision state dict is loaded (``load_state_dict`` with its
    ``features.*`` keys; check them first with :func:`vgg_weight_problems`).

    Args:
        network: ``vgg16`` or ``vgg19``.
        layers: the ReLUs whose outputs :meth:`forward` returns (``relu1_2``, ...), in this
            order; None: :data:`VGG_DEFAULT_LAYERS`.
        input_range: ``(lo, hi)`` of the images given to :meth:`forward`.

    Raises:
        ValueError: an unknown network, an empty list or an unknown layer name (the valid
            names are listed).
    """

    def __init__(
        self,
        network: str = "vgg16",
        layers: Sequence[str] | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        names = vgg_layer_indices(network)
        layers = tuple(layers) if layers is not None else VGG_DEFAULT_LAYERS[network]
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            raise ValueError(
                f"unknown {network} layer name(s) {unknown or '(none given)'}; valid names: "
                + ", ".join(names)
            )
        self.network = network
        self.layers = layers
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.indices = tuple(names[name] for name in layers)
        modules: list[nn.Module] = []
        channels = 3
        for item in _vgg_config(network):
            if len(modules) > max(self.indices):
                break
            if item == _POOL:
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                modules.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
                modules.append(nn.ReLU(inplace=False))
                channels = int(item)
        self.features = nn.Sequential(*modules[: max(self.indices) + 1])
        self._freeze()

    def extra_repr(self) -> str:
        return f"network={self.network}, layers={list(self.layers)}, input={self.input_range}"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The requested layers' activations on ``x`` (images in ``input_range``).

        Args:
            x: ``(N, 1 or 3, H, W)``.

        Returns:
            One ``(N, C_l, H_l, W_l)`` tensor per layer of ``layers``, in that order.
        """
        h = imagenet_input(x, self.input_range)
        found: dict[int, torch.Tensor] = {}
        wanted = set(self.indices)
        for index, module in enumerate(self.features):
            h = module(h)
            if index in wanted:
                found[index] = h
        return [found[index] for index in self.indices]


class DiscriminatorFeatures(_Frozen):
    """A trained, unconditional D's intermediate feature maps of every scale; frozen.

    Args:
        discriminator: D with its trained weights (its detail gain included).

    Raises:
        ValueError: a conditional D (it needs the input image beside the judged one).
    """

    def __init__(self, discriminator: MultiScaleDiscriminator) -> None:
        super().__init__()
        if discriminator.conditional:
            raise ValueError(
                "a conditional D judges (input, image) pairs; its features need the input image, "
                "which the perceptual loss does not get"
            )
        self.discriminator = discriminator
        self._freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """D's features of ``x``: every scale's ``n_layers + 1`` maps, finest scale first.

        Args:
            x: ``(N, C, H, W)`` images as D was trained on them.
        """
        return [feature for _, features in self.discriminator(x) for feature in features]
