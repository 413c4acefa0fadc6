"""Export the generator G to TorchScript (or ONNX) for use without medi2i.

The exported network takes and returns ``(N, 1, H, W)`` float32 tensors in the normalised
range the model was trained on (``data.normalization.output_range``); a JSON file written next
to it (``<file>.json``) holds what is needed to use it correctly: the normaliser's state (mode,
window, percentiles, output range, clipping), the training config, the checkpoint and weights
it came from, and the size multiple G pads to.

**TorchScript.** G's forward pads its input to a multiple of ``2**downsamplings`` with Python
control flow that tracing would freeze at the example size, and its code is not scriptable.
So G is *traced* at an example size that is already a multiple (where that padding is a
no-op), and wrapped in a small *scripted* module that does the padding and cropping itself,
exactly as G does (reflect, or replicate for tiny images). The result accepts any ``H x W``.

**ONNX** (only when the ``onnx`` package is installed): the same padding is written with
traceable tensor operations (always reflect, so ``H`` and ``W`` must exceed half the
multiple) and exported with dynamic batch, height and width. It is checked with onnxruntime
when that is installed, else only written.

Every export is checked against eager G on random inputs (the example size and an odd size):
the largest absolute difference must be within ``1e-5`` (TorchScript; see
:data:`ONNX_TOLERANCE` for onnxruntime), else the export is refused and the file removed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medi2i.config import config_to_dict
from medi2i.inference.loading import LoadedGenerator, Weights, load_generator
from medi2i.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["EXPORT_TOLERANCE", "ONNX_TOLERANCE", "ExportError", "export_generator", "metadata_path"]

EXPORT_TOLERANCE = 1e-5
"""Largest absolute difference allowed between a TorchScript export and eager G (normalised
units). TorchScript runs the same kernels as eager, so the difference is normally exactly 0."""
ONNX_TOLERANCE = 1e-4
"""The same for ONNX checked with onnxruntime: its convolution and normalisation kernels sum in
another order, which alone gives float32 differences of a few 1e-5 on a unit range (measured
2.6e-5 to 4.7e-5 on the CPU demo G with onnxruntime 1.32); a real export error (a wrong pad,
a frozen shape) is orders of magnitude larger."""
ONNX_OPSET = 17

ExportFormat = Literal["torchscript", "onnx"]


class ExportError(RuntimeError):
    """The exported model does not reproduce eager G, or the format is unavailable."""


class _PadCrop(nn.Module):
    """Pad to ``multiple`` like :func:`medi2i.models.layers.pad_to_multiple`, run, crop.

    Scripted around a traced G whose own padding was traced as a no-op.
    """

    def __init__(self, core: nn.Module, multiple: int) -> None:
        super().__init__()
        self.core = core
        self.multiple = int(multiple)

    def forward(self, x: Tensor) -> Tensor:
        h = x.size(2)
        w = x.size(3)
        ph = (self.multiple - h % self.multiple) % self.multiple
        pw = (self.multiple - w % self.multiple) % self.multiple
        top = ph // 2
        bottom = ph - top
        left = pw // 2
        right = pw - left
        if ph > 0 or pw > 0:
            if max(top, bottom) < h and max(left, right) < w:
                x = F.pad(x, [left, right, top, bottom], mode="reflect")
            else:
                x = F.pad(x, [left, right, top, bottom], mode="replicate")
        y = self.core(x)
        return y[:, :, top : top + h, left : left + w]


class _OnnxPadCrop(nn.Module):
    """Traceable variant for ONNX: sizes stay symbolic, always reflect padding."""

    def __init__(self, generator: nn.Module, multiple: int) -> None:
        super().__init__()
        self.generator = generator
        self.multiple = int(multiple)

    def forward(self, x: Tensor) -> Tensor:
        m = self.multiple
        h, w = x.shape[2], x.shape[3]
        ph = (m - h % m) % m
        pw = (m - w % m) % m
        top, left = ph // 2, pw // 2
        padded = F.pad(x, [left, pw - left, top, ph - top], mode="reflect")
        y = self.generator(padded)
        return y[:, :, top : top + h, left : left + w]


def metadata_path(model_path: str | Path) -> Path:
    """Where the metadata JSON of an exported model lives (``<file>.json``)."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def _check_shapes(multiple: int, example_size: int) -> list[tuple[int, ...]]:
    """Input shapes the export is checked on: the example size and an odd, off-multiple size."""
    odd_h = example_size + multiple // 2 + 1
    odd_w = max(multiple + 1, example_size - multiple // 2 - 3)
    return [(1, 1, example_size, example_size), (2, 1, odd_h, odd_w)]


def _max_diff(fn, generator: nn.Module, shapes: list[tuple[int, ...]], seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for shape in shapes:
            x = torch.rand(shape, generator=gen)
            expected = generator(x)
            got = fn(x)
            if tuple(got.shape) != tuple(expected.shape):
                raise ExportError(
                    f"exported model returned shape {tuple(got.shape)} for input {shape}, "
                    f"eager G {tuple(expected.shape)}"
                )
            worst = max(worst, float((got - expected).abs().max()))
    return worst


def _export_torchscript(generator: nn.Module, multiple: int, example_size: int, dest: Path) -> None:
    example = torch.rand(1, 1, example_size, example_size)
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream (torch 2.13 warns on trace/script/save/load) but
        # is still the format that loads in C++ and in plain PyTorch without medi2i. G's
        # padding branch (a no-op at this size) triggers "converting a tensor to a Python
        # boolean" warnings; the comparison with eager G below is what decides.
        warnings.simplefilter("ignore")
        core = torch.jit.trace(generator, example, check_trace=False)
        scripted = torch.jit.script(_PadCrop(core, multiple))
    with atomic_path(dest) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, str(tmp))


def _export_onnx(generator: nn.Module, multiple: int, example_size: int, dest: Path) -> bool:
    """Write the ONNX file; returns whether onnxruntime checked it (else just written)."""
    example = torch.rand(1, 1, example_size, example_size)
    wrapper = _OnnxPadCrop(generator, multiple).eval()
    with atomic_path(dest) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["prediction"],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                "prediction": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(dest))
    return importlib.util.find_spec("onnxruntime") is not None


def _onnx_runner(dest: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        (out,) = session.run(None, {"image": x.numpy().astype(np.float32)})
        return torch.from_numpy(out)

    return run


def export_generator(
    run_or_checkpoint: str | Path | LoadedGenerator,
    out_path: str | Path,
    *,
    format: ExportFormat = "torchscript",
    weights: Weights = "ema",
    example_size: int = 256,
) -> Path:
    """Export G of a run (EMA weights by default), checked against eager G.

    Args:
        run_or_checkpoint: run directory, checkpoint file, or an already loaded generator.
        out_path: the model file to write (e.g. ``g.ts`` / ``g.onnx``); the metadata go to
            ``<out_path>.json`` (:func:`metadata_path`).
        format: ``torchscript`` or ``onnx``.
        weights: ``ema`` or ``online`` (ignored for a loaded generator).
        example_size: side of the square example input used to trace and check (rounded up
            to G's size multiple).

    Returns:
        The path of the exported model.

    Raises:
        ExportError: ONNX requested without the ``onnx`` package, or the export differs
            from eager G by more than :data:`EXPORT_TOLERANCE` (ONNX: :data:`ONNX_TOLERANCE`;
            the file is then removed).
        ValueError: unknown format or a too small example size.
        FileNotFoundError: no checkpoint.
    """
    if format not in ("torchscript", "onnx"):
        raise ValueError(f"format must be 'torchscript' or 'onnx', got {format!r}")
    if format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ExportError(
            "ONNX export needs the 'onnx' package (pip install onnx; add onnxruntime to have "
            "the export checked); TorchScript export works without it"
        )
    loaded = (
        run_or_checkpoint
        if isinstance(run_or_checkpoint, LoadedGenerator)
        else load_generator(run_or_checkpoint, weights=weights, device="cpu")
    )
    generator = loaded.generator.to("cpu").eval()
    multiple = int(getattr(generator, "multiple", 1))
    if example_size < 8:
        raise ValueError(f"example_size must be >= 8, got {example_size}")
    example_size = -(-int(example_size) // multiple) * multiple
    dest = Path(out_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shapes = _check_shapes(multiple, example_size)

    if format == "torchscript":
        _export_torchscript(generator, multiple, example_size, dest)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            reloaded = torch.jit.load(str(dest), map_location="cpu")
        checked_with = "torch.jit.load"
        diff: float | None = _max_diff(reloaded, generator, shapes, seed=0)
    else:
        if _export_onnx(generator, multiple, example_size, dest):
            checked_with = "onnxruntime"
            diff = _max_diff(_onnx_runner(dest), generator, shapes, seed=0)
        else:
            checked_with, diff = "not checked (onnxruntime not installed)", None
            log.warning("%s written but not checked: onnxruntime is not installed", dest)
    tolerance = EXPORT_TOLERANCE if format == "torchscript" else ONNX_TOLERANCE
    if diff is not None and not diff <= tolerance:
        dest.unlink(missing_ok=True)
        raise ExportError(
            f"{format} export differs from eager G by {diff:.3g} (> {tolerance:g}) on "
            f"inputs {shapes}; nothing written"
        )

    ncfg = loaded.normalizer.cfg
    meta = {
        "format": format,
        "file": dest.name,
        "input": {
            "name": "image",
            "shape": "(N, 1, H, W) float32",
            "range": list(ncfg.output_range),
            "any_size": format == "torchscript",
            "min_size_px": None if format == "torchscript" else multiple // 2 + 1,
        },
        "output": {"name": "prediction", "shape": "(N, 1, H, W) float32"},
        "size_multiple": multiple,
        "usage": (
            "window [lo, hi] per normalization.mode (fixed: window; dtype: the stored integer "
            "range; dataset_percentile: dataset_window; image_percentile: percentiles of the "
            "input); x = (image - lo) / (hi - lo), clipped to [0, 1] when clip, then mapped "
            "to output_range; y = model(x); image_out = unit(y) * (hi - lo) + lo"
        ),
        "normalization": loaded.normalizer.state_dict(),
        # where the training inputs sat in the window (medi2i.data.intensity): compare new
        # inputs with it before trusting an output
        "intensity_profile": None if loaded.intensity is None else loaded.intensity.to_dict(),
        "checkpoint": str(loaded.checkpoint),
        "weights": loaded.weights,
        "epoch": loaded.epoch,
        "check": {
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "input_shapes": [list(s) for s in shapes],
            "checked_with": checked_with,
        },
        "torch": torch.__version__,
        "config": config_to_dict(loaded.config),
    }
    atomic_write_text(metadata_path(dest), json.dumps(meta, indent=2) + "\n")
    log.info(
        "exported G (%s weights) to %s (%s); max |export - eager| = %s; metadata %s",
        loaded.weights,
        dest,
        format,
        "unchecked" if diff is None else f"{diff:.2e}",
        metadata_path(dest),
    )
    return dest
