"""Text summary of the three networks a config describes (``medi2i model-summary``).

Shapes are traced on PyTorch's ``meta`` device: the networks are built and run without
allocating or computing anything, so even the ~61M-parameter generator summarises instantly.
"""

from __future__ import annotations

import logging

import torch

from medi2i.config import Config, RegistrationConfig
from medi2i.models.discriminator import build_discriminator, resolve_d_conditional
from medi2i.models.generator import build_generator, resolve_generator_config
from medi2i.models.layers import count_parameters
from medi2i.models.registration import RegistrationNet, build_registration

logger = logging.getLogger(__name__)

__all__ = ["model_summary"]


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _why(choice: str, r_enabled: bool) -> str:
    if choice != "auto":
        return ""
    return ", R is on" if r_enabled else ", R is off"


def _registration_lines(
    rcfg: RegistrationConfig, r: torch.nn.Module, field: torch.Tensor
) -> list[str]:
    state = "enabled" if rcfg.enabled else "disabled in this config"
    io = f"   input (G output, target) -> displacement field {_shape(field)} in pixels (dy, dx)"
    if isinstance(r, RegistrationNet):
        return [
            f"R  registration UNet ({state}): {count_parameters(r):,} parameters",
            f"   base {rcfg.base_channels}, depth {rcfg.depth}, attention "
            f"{_on_off(rcfg.attention)}; pads to a multiple of {r.multiple}",
            io,
        ]
    return [
        f"R  fitted per pair at every step ({state}): no parameters",
        f"   control point every {rcfg.grid_spacing} px, {rcfg.fit_iterations} Adam steps of "
        f"{rcfg.fit_step_px:g} px on the detail band (sigma {rcfg.detail_sigma:g} px)",
        io,
    ]


def model_summary(cfg: Config, image_size: int = 256) -> str:
    """Describe G, R and D of ``cfg``: architecture, parameter count and output shapes.

    Every network is listed (R and D also when disabled, marked so), each run on one
    ``(1, 1, image_size, image_size)`` input.

    Args:
        cfg: the full configuration (its ``model`` section is read).
        image_size: side of the square input used to trace the output shapes (>= 1).

    Returns:
        A multi-line, human-readable table.

    Raises:
        ValueError: if ``image_size < 1`` or the generator config is incomplete.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    mcfg = cfg.model
    spec = resolve_generator_config(mcfg.G)
    conditional = resolve_d_conditional(mcfg)
    size = (1, 1, image_size, image_size)
    with torch.device("meta"), torch.no_grad():
        g = build_generator(mcfg.G, output_range=cfg.data.normalization.output_range).eval()
        r = build_registration(mcfg.R, lung_weight=cfg.loss.lung_weight).eval()
        d = build_discriminator(mcfg.D, conditional).eval()
        x = torch.empty(size)
        g_out = g(x)
        # a fitted R runs an optimiser, which meta tensors cannot: its field has the image's shape
        field = r(g_out, x) if mcfg.R.kind == "net" else torch.empty(1, 2, *x.shape[-2:])
        d_out = d(g_out, x if conditional else None)

    n_g, n_r, n_d = count_parameters(g), count_parameters(r), count_parameters(d)
    lines = [f"Model summary for a {_shape(x)} input (trainable parameters)", ""]
    lines += [
        f"G  UNet generator, preset {mcfg.G.preset!r}: {n_g:,} parameters",
        f"   widths {list(spec.widths)}, {spec.res_blocks} res block(s)/level, norm {spec.norm}, "
        f"activation {spec.activation}, dropout {spec.dropout:g}",
        f"   attention {_on_off(spec.attention)}, upsample {spec.upsample} + conv, "
        f"out activation {spec.out_activation}, residual output {_on_off(spec.residual_output)}",
        f"   pads internally to a multiple of {g.multiple}; output {_shape(g_out)}",
        "",
        *_registration_lines(mcfg.R, r, field),
        "",
        f"D  multi-scale PatchGAN ({'enabled' if mcfg.D.enabled else 'disabled in this config'}): "
        f"{n_d:,} parameters",
        f"   {mcfg.D.num_scales} scale(s) x {mcfg.D.n_layers} layers, base {mcfg.D.base_channels}, "
        f"spectral norm {_on_off(mcfg.D.spectral_norm)}, "
        f"{'conditioned on the input' if conditional else 'unconditional'} "
        f"(conditional: {mcfg.D.conditional}{_why(mcfg.D.conditional, mcfg.R.enabled)})",
    ]
    side = image_size
    for index, (logits, features) in enumerate(d_out):
        feats = " ".join(_shape(f) for f in features)
        lines.append(f"   scale {index} ({side}x{side} input): logits {_shape(logits)}")
        lines.append(f"      features {feats}")
        side = (side + 1) // 2  # 3x3 avg-pool, stride 2, padding 1
    total = n_g + (n_r if mcfg.R.enabled else 0) + (n_d if mcfg.D.enabled else 0)
    lines += ["", f"Total trained (G + enabled R/D): {total:,} parameters"]
    return "\n".join(lines)
