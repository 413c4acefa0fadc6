"""Evaluate a generator on a split: mean metrics, gathered over ranks, plus sample images.

The trainer calls this with the **EMA** generator (``EMA.module``), never the online one: the
online weights are not even passed in, so validation cannot use or disturb them. D's statistics
on the validation images carry the names of :mod:`medi2i.run.scalars` (``VAL_D_STATS``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from medi2i.losses.adversarial import DECISION_THRESHOLDS
from medi2i.metrics import compute_metrics, reference_key
from medi2i.run.scalars import D_ACC, D_FAKE, D_GAP, D_REAL
from medi2i.training.device import batch_tensor
from medi2i.training.distributed import DistContext, all_reduce_sum
from medi2i.utils.precision import autocast

log = logging.getLogger(__name__)

#: Metrics computed during validation (each whole-image and inside the mask).
VAL_METRICS = ("psnr", "ssim", "mae", "sharpness", "hfen", "gmsd")


@dataclass
class EvalResult:
    """Mean metrics over a split and a few example images (on the CPU)."""

    metrics: dict[str, float]
    reference: str
    images: int
    samples: dict[str, torch.Tensor] = field(default_factory=dict)


def _d_separation(
    d: nn.Module,
    batch: dict,
    x: torch.Tensor,
    pred: torch.Tensor,
    conditional: bool,
    gan_mode: str,
) -> dict[str, torch.Tensor]:
    """Per-image D statistics on the target D was trained to call real vs G's output."""
    real = batch_tensor(batch, "target", x.device)  # what D saw as real in training
    n = x.shape[0]
    was_training = d.training
    d.eval()  # spectral norm's power iteration must not advance during validation
    try:
        outputs = d(torch.cat([real, pred]), torch.cat([x, x]) if conditional else None)
    finally:
        d.train(was_training)
    out: dict[str, list[torch.Tensor]] = {D_REAL: [], D_FAKE: [], D_ACC: []}
    threshold = DECISION_THRESHOLDS[gan_mode]
    for logits, _ in outputs:
        r, f = logits[:n].float().flatten(1), logits[n:].float().flatten(1)
        out[D_REAL].append(r.mean(1))
        out[D_FAKE].append(f.mean(1))
        out[D_ACC].append(0.5 * ((r > threshold).float().mean(1) + (f < threshold).float().mean(1)))
    means = {k: torch.stack(v).mean(0) for k, v in out.items()}  # over scales, per image
    means[D_GAP] = means[D_REAL] - means[D_FAKE]
    return means


@torch.no_grad()
def evaluate_generator(
    generator: nn.Module,
    loader: DataLoader,
    *,
    ctx: DistContext,
    data_range: float,
    autocast_dtype: torch.dtype | None = None,
    sample_count: int = 0,
    max_images: int | None = None,
    metrics: tuple[str, ...] = VAL_METRICS,
    discriminator: nn.Module | None = None,
    d_conditional: bool = False,
    gan_mode: str = "lsgan",
) -> EvalResult:
    """Mean metrics of ``generator`` over ``loader`` (this rank's share), summed over ranks.

    Args:
        generator: the network to evaluate; put in eval mode here and left in eval mode.
        loader: batches with ``input``, ``target``, ``mask`` (and ``aligned_target``, which
            is preferred as the reference when present).
        ctx: distributed context (metric sums are all-reduced).
        data_range: width of the images' value range.
        autocast_dtype: run the generator under autocast with this dtype (None = off).
        sample_count: keep this many first images (input, output, reference, mask).
        max_images: stop after this many images on this rank.
        metrics: metric names for :func:`~medi2i.metrics.compute_metrics`.
        discriminator: D, to measure whether it tells held-out real targets from the
            generator's outputs: adds ``D_real``, ``D_fake`` (mean logits), ``D_gap``
            (their difference) and ``D_acc`` (patch accuracy at the mode's threshold) on these
            images. A D that separates only the images it was trained on has memorised them;
            one at chance here gives G no information, whatever its training-batch numbers.
        d_conditional: whether D takes the input as its condition.
        gan_mode: the GAN mode (sets the decision threshold of ``D_acc``).

    Returns:
        The mean of every metric over all images with a finite value.
    """
    generator.eval()
    device = ctx.device
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    kept: dict[str, list[torch.Tensor]] = {"input": [], "output": [], "reference": [], "mask": []}
    kept_n = 0
    seen = 0
    reference = "target"
    for batch in loader:
        reference = reference_key(batch)
        x = batch_tensor(batch, "input", device)
        ref = batch_tensor(batch, reference, device)
        mask = batch_tensor(batch, "mask", device)
        with autocast(device.type, autocast_dtype):
            pred = generator(x)
        pred = pred.float()
        values = compute_metrics(pred, ref, data_range=data_range, mask=mask, include=metrics)
        if discriminator is not None:
            values.update(_d_separation(discriminator, batch, x, pred, d_conditional, gan_mode))
        for name, v in values.items():
            finite = torch.isfinite(v)
            sums[name] = sums.get(name, 0) + torch.where(finite, v, 0).sum()
            counts[name] = counts.get(name, 0) + finite.sum()
        if kept_n < sample_count:
            take = min(sample_count - kept_n, x.shape[0])
            for key, t in (("input", x), ("output", pred), ("reference", ref), ("mask", mask)):
                kept[key].append(t[:take].detach().float().cpu())
            kept_n += take
        seen += x.shape[0]
        if max_images is not None and seen >= max_images:
            break
    names = sorted(sums)
    if not names:
        return EvalResult({}, reference, 0)
    seen_t = torch.tensor(float(seen), device=device)
    packed = torch.stack(
        [*(sums[n].float() for n in names), *(counts[n].float() for n in names), seen_t]
    )
    packed = all_reduce_sum(packed, ctx).tolist()  # one host transfer for every metric
    k = len(names)
    means = {
        n: (packed[i] / packed[k + i]) if packed[k + i] > 0 else float("nan")
        for i, n in enumerate(names)
    }
    samples = {key: torch.cat(v) for key, v in kept.items() if v}
    return EvalResult(means, reference, int(packed[-1]), samples)
