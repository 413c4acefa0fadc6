"""What a training run is made of, built from its config: the data, the networks and their
optimisers.

:func:`build_training_data` reads the splits and makes the loaders; :func:`build_networks` makes
G, R and D, G's EMA, the optimisers, schedules, AMP scaler and losses. The trainer calls them in
this order, once, and keeps what they return: the order fixes how the random generators are
consumed (network initialisation after the data), so a run and its resume build the same
things.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from medi2i.config import Config
from medi2i.data.builders import build_dataloader, build_dataset, build_normalizer, resolve_pairs
from medi2i.data.dataset import PairedImageDataset
from medi2i.data.intensity import IntensityProfile
from medi2i.data.normalization import Normalizer
from medi2i.data.pairs import MissingSplitError
from medi2i.losses import DiscriminatorLoss, GeneratorLoss, build_perceptual_loss
from medi2i.models import build_discriminator, build_generator, build_registration
from medi2i.models.discriminator import resolve_d_conditional
from medi2i.models.field_centring import SystematicFieldRemoval
from medi2i.training.distributed import DistContext
from medi2i.training.ema import EMA, resolve_warmup_steps
from medi2i.training.phases import Phase, active_epochs, plan_phases
from medi2i.training.sampler import EpochSampler
from medi2i.training.schedules import build_scheduler
from medi2i.training.state import load_pretrained_generator
from medi2i.utils.precision import check_precision

log = logging.getLogger(__name__)

__all__ = [
    "INTENSITY_PROFILE_IMAGES",
    "Networks",
    "TrainingData",
    "build_networks",
    "build_training_data",
    "optional_split",
    "trainable_networks",
]

INTENSITY_PROFILE_IMAGES = 64
"""Training inputs (evenly spaced) the stored intensity profile is measured on."""


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The splits a run trains and validates on, with their loaders."""

    normalizer: Normalizer
    data_range: float
    """Width of the normalised range (the metrics' ``data_range``)."""
    train_set: PairedImageDataset
    intensity_profile: IntensityProfile
    """Where the training inputs sit in the window: predict checks new images against it."""
    steps_per_epoch: int
    sampler: EpochSampler
    train_loader: DataLoader
    val_set: PairedImageDataset | None
    val_loader: DataLoader | None
    pairs_misaligned: bool
    pairs_reason: str


def pin_memory(cfg: Config, device: torch.device) -> bool | None:
    """The loaders' ``pin_memory``: the config's choice, else on for CUDA."""
    return None if cfg.data.pin_memory is not None else device.type == "cuda"


def optional_split(cfg: Config, split: str, normalizer: Normalizer) -> PairedImageDataset | None:
    """An evaluation split, or None (with a warning) when the dataset has none."""
    try:
        return build_dataset(cfg, split, normalizer=normalizer, train=False)
    except MissingSplitError as exc:
        log.warning("no %s split (%s); continuing without it", split, exc.problems[0])
        return None


def eval_loader(
    cfg: Config, ctx: DistContext, dataset: PairedImageDataset | None
) -> DataLoader | None:
    """This rank's share of an evaluation split, in order (None without the split)."""
    if dataset is None:
        return None
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(
        subset,
        batch_size=cfg.data.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        pin_memory=bool(pin_memory(cfg, ctx.device)),
    )


def build_training_data(cfg: Config, ctx: DistContext, resume: dict | None) -> TrainingData:
    """The training split, its sampler and loader, the validation split, and whether the
    training pairs are misaligned. A resumed run keeps its checkpoint's normaliser."""
    normalizer = (
        Normalizer.from_state_dict(resume["normalizer"]) if resume else build_normalizer(cfg)
    )
    lo, hi = cfg.data.normalization.output_range
    train_set = build_dataset(cfg, "train", normalizer=normalizer)
    profile = IntensityProfile.from_images(train_set.raw_inputs(INTENSITY_PROFILE_IMAGES))
    log.info("intensity profile: %s", profile.describe())
    world_batch = cfg.data.batch_size * ctx.world_size
    steps = cfg.train.steps_per_epoch or max(1, len(train_set) // world_batch)
    sampler = EpochSampler(
        len(train_set),
        batch_size=cfg.data.batch_size,
        steps=steps,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    train_loader = build_dataloader(
        train_set, cfg, shuffle=False, sampler=sampler, pin_memory=pin_memory(cfg, ctx.device)
    )
    val_set = optional_split(cfg, "val", normalizer)
    misaligned, why = resolve_pairs(cfg, train_set)
    log.info("training pairs: %s (%s)", "misaligned" if misaligned else "aligned", why)
    return TrainingData(
        normalizer=normalizer,
        data_range=float(hi - lo),
        train_set=train_set,
        intensity_profile=profile,
        steps_per_epoch=steps,
        sampler=sampler,
        train_loader=train_loader,
        val_set=val_set,
        val_loader=eval_loader(cfg, ctx, val_set),
        pairs_misaligned=misaligned,
        pairs_reason=why,
    )


# --------------------------------------------------------------------------------------------
# networks, optimisers, schedules, losses
# --------------------------------------------------------------------------------------------


@dataclass
class Networks:
    """G, R and D with everything that updates them."""

    G: nn.Module
    R: nn.Module | None
    D: nn.Module | None
    r_learnt: bool
    """R has weights (``kind: net``); a fitted R has none to optimise, save or synchronise."""
    r_centring: SystematicFieldRemoval | None
    d_conditional: bool
    d_in_target_frame: bool
    memory_format: torch.memory_format
    ema: EMA
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    g_loss: GeneratorLoss
    d_loss: DiscriminatorLoss
    phases: tuple[Phase, ...]
    """The run's phases (one, of every enabled network, without ``train.phases``)."""


def trainable_networks(
    G: nn.Module, R: nn.Module | None, D: nn.Module | None
) -> dict[str, nn.Module]:
    """The networks with weights, by name (``G``, then ``R`` and ``D`` when given)."""
    nets = {"G": G}
    if R is not None:
        nets["R"] = R
    if D is not None:
        nets["D"] = D
    return nets


def _calibration_targets(
    data: TrainingData, device: torch.device, count: int = 32
) -> list[torch.Tensor]:
    """The first ``count`` training targets, whole and un-augmented (D's detail gain)."""
    images = []
    for index in range(min(count, len(data.train_set))):
        arrays, _, _ = data.train_set.load_unit(index)
        image = data.normalizer.unit_to_output(arrays["target"]).astype(np.float32)
        images.append(torch.from_numpy(image)[None, None].to(device))
    return images


def _optimizer(cfg: Config, name: str, net: nn.Module, device: torch.device):
    oc = getattr(cfg.optim, name)
    params = [p for p in net.parameters() if p.requires_grad]
    kwargs = {"lr": oc.lr, "betas": tuple(oc.betas)}
    if device.type == "cuda":
        kwargs["fused"] = True
    if oc.weight_decay > 0:
        return torch.optim.AdamW(params, weight_decay=oc.weight_decay, **kwargs)
    return torch.optim.Adam(params, **kwargs)


def build_networks(
    cfg: Config, ctx: DistContext, data: TrainingData, resume: dict | None
) -> Networks:
    """G (from ``train.pretrained_G`` when set), R, D, the EMA, optimisers, schedules and losses
    (G's with the frozen network of its perceptual term when ``loss.perceptual_weight > 0``,
    loaded on the training device from the file the config names, also on resume).

    Raises:
        ValueError: ``train.amp: fp16`` on the CPU, an unknown perceptual layer.
        PerceptualWeightsError: the perceptual term's weights file cannot be used.
    """
    tc, device = cfg.train, ctx.device
    lo, hi = cfg.data.normalization.output_range
    G = build_generator(cfg.model.G, output_range=(lo, hi)).to(device)
    R = None
    if cfg.model.R.enabled:
        R = build_registration(cfg.model.R, lung_weight=cfg.loss.lung_weight).to(device)
    r_learnt = R is not None and cfg.model.R.kind == "net"
    r_centring = None
    if R is not None and cfg.model.R.center:
        r_centring = SystematicFieldRemoval(cfg.model.R.center_momentum)
    d_conditional = False
    D = None
    if cfg.model.D.enabled:
        d_conditional = resolve_d_conditional(cfg.model, data.pairs_misaligned)
        D = build_discriminator(cfg.model.D, d_conditional).to(device)
        if D.front is not None and resume is None:
            D.front.calibrate(_calibration_targets(data, device))
    memory_format = torch.channels_last if tc.channels_last else torch.preserve_format
    for net in trainable_networks(G, R if r_learnt else None, D).values():
        net.to(memory_format=memory_format)
    warmup = resolve_warmup_steps(
        tc.ema_decay, tc.ema_warmup_steps, pretrained=bool(tc.pretrained_G)
    )
    ema = EMA(G, tc.ema_decay, warmup)
    if tc.pretrained_G and resume is None:
        info = load_pretrained_generator(tc.pretrained_G, G, ema)
        log.info("initialised G from %s: %s", tc.pretrained_G, info)
    optimizers = {
        name: _optimizer(cfg, name, net, device)
        for name, net in trainable_networks(G, R if r_learnt else None, D).items()
    }
    phases = plan_phases(cfg)
    # a network joining in a later phase gets its warm-up and decay over its own epochs
    schedulers = {
        name: build_scheduler(
            opt,
            cfg.optim,
            steps_per_epoch=data.steps_per_epoch,
            epochs=max(1, active_epochs(phases, name, tc.epochs)),
        )
        for name, opt in optimizers.items()
    }
    idle = [name for name in optimizers if not active_epochs(phases, name, tc.epochs)]
    if idle:
        log.warning(
            "%s never train%s: a run of %d epoch(s) is too short for train.phases' shares",
            "+".join(idle),
            "s" if len(idle) == 1 else "",
            tc.epochs,
        )
    amp_dtype = check_precision("fp32" if tc.amp == "off" else tc.amp, device, "train.amp")
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
    perceptual = build_perceptual_loss(cfg.loss, input_range=(lo, hi), device=device)
    if ctx.distributed:
        ids = [device.index] if device.type == "cuda" else None
        G = DDP(G, device_ids=ids)
        if r_learnt:
            R = DDP(R, device_ids=ids)
        if D is not None:
            D = DDP(D, device_ids=ids)
    if tc.compile:
        # around DDP, as torch recommends; optimisers, EMA and checkpoints keep the original
        # modules' parameters (unwrap_model), so a compiled run saves the same files
        G = torch.compile(G)
        if r_learnt:
            R = torch.compile(R)
        if D is not None:
            D = torch.compile(D)
        log.info("networks compiled with torch.compile (the first steps compile)")
    return Networks(
        G=G,
        R=R,
        D=D,
        r_learnt=r_learnt,
        r_centring=r_centring,
        d_conditional=d_conditional,
        d_in_target_frame=R is not None and cfg.model.D.frame == "target",
        memory_format=memory_format,
        ema=ema,
        optimizers=optimizers,
        schedulers=schedulers,
        amp_dtype=amp_dtype,
        scaler=scaler,
        g_loss=GeneratorLoss(cfg.loss, data_range=data.data_range, perceptual=perceptual),
        d_loss=DiscriminatorLoss(cfg.loss),
        phases=phases,
    )
