"""The Python prediction API: ``Predictor(...)(image)`` for notebooks and scripts.

::

    import medi2i
    predictor = medi2i.Predictor.from_run("runs/exp1", tta=["identity", "vflip"])
    soft_tissue = predictor(xray)          # (H, W) in the input's units -> same units

A :class:`Predictor` wraps the generator G of a trained run (R and D are training aids) with
the normalisation it was trained with: an image in stored/physical units is normalised with
the window the checkpoint's normaliser gives for it, translated, and mapped back to the same
units. Images of any size are accepted: whole (G pads internally to its size multiple) when
they fit in a tile (``tile``, default 1024 px: memory stays bounded by one tile's), else tile
by tile with Gaussian-blended overlaps (:mod:`medi2i.inference.tiling`); an image is never
resized. Optional test-time augmentation (:mod:`medi2i.inference.tta`)
averages the predictions of several transformed copies.

Every image is first compared with the intensities of the training inputs stored in the
checkpoint (:mod:`medi2i.data.intensity`): an image encoded differently (8-bit instead of
16-bit, floats in [0, 1], another window) is refused with the figures and a suggested
``input_window``, because a generator fed intensities it never saw returns an image-like
output that is not a prediction. ``input_window`` normalises every image with a window the
caller names (outputs are mapped back with it, so they keep the input's units).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from medi2i.data.intensity import measure_intensity
from medi2i.data.normalization import Window
from medi2i.inference.loading import LoadedGenerator, Weights, load_generator
from medi2i.inference.tiling import DEFAULT_TILE, check_tiling, tiled_apply
from medi2i.inference.tta import TTATransform, parse_tta
from medi2i.utils.precision import autocast, check_precision

log = logging.getLogger(__name__)

__all__ = ["INTENSITY_CHECKS", "IntensityMismatchError", "Predictor"]

INTENSITY_CHECKS = ("error", "warn", "off")
"""What a mismatch with the training inputs' intensities does: refuse, warn, or nothing."""


class IntensityMismatchError(ValueError):
    """An image's intensities do not look like the training inputs' (message says how)."""


class Predictor:
    """Translate images with a trained generator (under ``torch.no_grad``).

    Args:
        loaded: the generator with its config and normaliser (:func:`load_generator`).
        tta: test-time augmentation names (``identity``, ``hflip``, ``vflip``, ``shift``,
            see :func:`~medi2i.inference.tta.parse_tta`); ``None`` = plain prediction.
        tile: tile side in pixels for sliding-window inference of images larger than it
            (default :data:`~medi2i.inference.tiling.DEFAULT_TILE`); ``None`` = always
            whole-image (memory grows with the image).
        overlap: overlap of neighbouring tiles, a fraction of the tile in ``[0, 1)``.
        batch_size: images (TTA copies or tiles) per forward pass of G.
        device: where to run G; ``None`` = where its parameters already are.
        input_window: ``(lo, hi)`` in the inputs' units: normalise every image with this
            window instead of the model's normalisation (and map outputs back with it).
        intensity_check: ``error`` (default) refuses an image whose intensities do not match
            the training inputs', ``warn`` logs it and predicts, ``off`` skips the check.
        channels_last: run G on channels-last tensors (its weights are converted in place);
            ``None`` = on the CPU, where oneDNN's convolutions run faster that way (a 256 px
            image of the demo's G: 14-18% less time, outputs equal to 1e-5), off elsewhere.
        precision: ``fp32`` (default: exact), ``bf16`` or ``fp16`` (GPU only): G's
            convolutions under autocast in the reduced type, its output back in float32.
            On a CPU with native bfloat16 (AVX512-BF16, AMX) bf16 about halves G's time;
            measured on the benchmark's test split it moved lung PSNR by +0.02 dB for a
            38.4 dB model and -0.03 dB for a 45.6 dB one (README, "Inference speed").

    Raises:
        ValueError: unknown TTA names, bad tiling settings, ``batch_size < 1``, a bad
            ``input_window``, ``intensity_check`` or ``precision``.
    """

    def __init__(
        self,
        loaded: LoadedGenerator,
        *,
        tta: Sequence[str] | None = None,
        tile: int | None = DEFAULT_TILE,
        overlap: float = 0.25,
        batch_size: int = 4,
        device: str | torch.device | None = None,
        input_window: Sequence[float] | None = None,
        intensity_check: str = "error",
        channels_last: bool | None = None,
        precision: str = "fp32",
    ) -> None:
        check_tiling(tile, overlap)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if intensity_check not in INTENSITY_CHECKS:
            raise ValueError(
                f"intensity_check must be one of {', '.join(INTENSITY_CHECKS)}, got "
                f"{intensity_check!r}"
            )
        self.intensity_check = intensity_check
        self.input_window = None
        if input_window is not None:
            try:
                lo, hi = (float(v) for v in input_window)
                self.input_window = Window(lo, hi)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"input_window must be (lo, hi) with finite lo < hi, got {input_window!r}"
                ) from exc
            log.info(
                "every input normalised with the given window [%g, %g]",
                self.input_window.lo,
                self.input_window.hi,
            )
        if loaded.intensity is None and intensity_check != "off":
            log.info(
                "%s holds no intensity profile of its training inputs: inputs are not "
                "checked against it",
                loaded.checkpoint,
            )
        self.loaded = loaded
        self.transforms: list[TTATransform] = parse_tta(tta)
        self.tile = None if tile is None else int(tile)
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        generator = loaded.generator
        if device is None:
            param = next(generator.parameters(), None)
            self.device = param.device if param is not None else torch.device("cpu")
        else:
            self.device = torch.device(device)
            generator.to(self.device)
        generator.eval()
        self.precision = precision
        self.amp_dtype = check_precision(precision, self.device)
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        generator.to(memory_format=self.memory_format)
        self.generator = generator
        self.normalizer = loaded.normalizer
        ncfg = self.normalizer.cfg
        if not ncfg.share_scale and ncfg.mode == "image_percentile":
            log.warning(
                "this model was trained with per-image target windows (normalization mode "
                "'image_percentile', share_scale false): the target's window is unknown at "
                "prediction time, so outputs are mapped back with the input's window"
            )

    @classmethod
    def from_run(
        cls,
        run_or_checkpoint: str | Path,
        *,
        weights: Weights = "ema",
        device: str | torch.device = "cpu",
        **kwargs,
    ) -> Predictor:
        """Load a run directory (its best, else last checkpoint) or a checkpoint file.

        Args:
            run_or_checkpoint: run directory or ``.pt`` file.
            weights: ``ema`` (default; what validation selected) or ``online``.
            device: where to run G.
            **kwargs: ``tta``, ``tile``, ``overlap``, ``batch_size``, ``precision``, ... (see
                the class).

        Returns:
            The predictor.

        Raises:
            FileNotFoundError: no checkpoint.
            ValueError: bad settings or an unreadable checkpoint.
        """
        loaded = load_generator(run_or_checkpoint, weights=weights, device=device)
        return cls(loaded, device=device, **kwargs)

    # -- description -----------------------------------------------------------------------

    @property
    def tta_names(self) -> list[str]:
        """Canonical names of the TTA transforms in use (``["identity"]`` without TTA)."""
        return [t.name for t in self.transforms]

    def describe(self) -> dict:
        """Settings and provenance, for reports (JSON-serialisable)."""
        return {
            "checkpoint": str(self.loaded.checkpoint),
            "weights": self.loaded.weights,
            "epoch": self.loaded.epoch,
            "tta": self.tta_names,
            "tile": self.tile,
            "overlap": self.overlap if self.tile is not None else None,
            "device": str(self.device),
            "precision": self.precision,
            "input_window": None
            if self.input_window is None
            else [self.input_window.lo, self.input_window.hi],
            "intensity_check": self.intensity_check,
            "normalization": self.normalizer.state_dict(),
        }

    # -- prediction ------------------------------------------------------------------------

    def _forward(self, x: Tensor) -> Tensor:
        """G on one batch, in G's memory format and precision; a plain contiguous float32
        tensor back."""
        with autocast(self.device.type, self.amp_dtype):
            out = self.generator(x.contiguous(memory_format=self.memory_format))
        return out.float().contiguous()

    def _run_generator(self, x: Tensor) -> Tensor:
        """G on a batch, in chunks of ``batch_size``, tiled when asked."""
        outputs = []
        for chunk in torch.split(x, self.batch_size):
            if self.tile is None:
                outputs.append(self._forward(chunk))
            else:
                outputs.append(
                    tiled_apply(
                        self._forward,
                        chunk,
                        tile=self.tile,
                        overlap=self.overlap,
                        batch_size=self.batch_size,
                        multiple=int(getattr(self.generator, "multiple", 1)),
                    )
                )
        return torch.cat(outputs)

    def predict_normalised(self, x: Tensor) -> Tensor:
        """Predict images that are already in the network's range (e.g. dataset items).

        With TTA, the transformed copies that keep the image's shape (flips) run together in
        one batch; the output is the mean of the inverse-transformed predictions.

        Args:
            x: ``(N, 1, H, W)`` (or ``(1, H, W)``, ``(H, W)``) in the normaliser's
                ``output_range``.

        Returns:
            The prediction, same shape as ``x``, float32, on ``x``'s device.

        Raises:
            ValueError: if ``x`` has another number of dims.
        """
        if x.ndim not in (2, 3, 4):
            raise ValueError(
                f"predict_normalised expects (N, 1, H, W), (1, H, W) or (H, W), got "
                f"{tuple(x.shape)}"
            )
        shape = x.shape
        batch = x.reshape((-1, 1, *shape[-2:])) if x.ndim < 4 else x
        with torch.no_grad():
            inp = batch.to(self.device, dtype=torch.float32)
            transformed = [t.forward(inp) for t in self.transforms]
            # group the copies by shape, so flips of one image share a forward pass
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, tx in enumerate(transformed):
                groups.setdefault(tuple(tx.shape), []).append(i)
            total = torch.zeros_like(inp)
            for members in groups.values():
                out = self._run_generator(torch.cat([transformed[i] for i in members]))
                for i, part in zip(members, torch.split(out, inp.shape[0])):
                    total += self.transforms[i].inverse(part).float()
            result = total / len(self.transforms)
        return result.reshape(shape).to(x.device)

    def window_for(
        self, image: np.ndarray, stored_dtype: str = "float32", source: str = ""
    ) -> Window:
        """The window ``image`` is normalised with: ``input_window`` when given, else the
        model's (see :meth:`Normalizer.window_for`)."""
        if self.input_window is not None:
            return self.input_window
        return self.normalizer.window_for(image, stored_dtype, source)

    def check_intensity(
        self, image: np.ndarray, window: Window, stored_dtype: str = "float32", source: str = ""
    ) -> list[str]:
        """Compare ``image`` (normalised by ``window``) with the training inputs' intensities.

        Returns:
            The differences found (empty when the image matches, or nothing to compare with).

        Raises:
            IntensityMismatchError: differences found and ``intensity_check`` is ``error``.
        """
        profile = self.loaded.intensity
        if profile is None or self.intensity_check == "off":
            return []
        problems = profile.mismatch(measure_intensity(image, window))
        if not problems:
            return []
        name = source or "image"
        stored = ", ".join(profile.stored_dtypes)
        text = (
            f"{name}: its intensities do not look like the training inputs' in the window "
            f"[{window.lo:g}, {window.hi:g}]: {'; '.join(problems)}. It is stored as "
            f"{stored_dtype} (training inputs: {stored})."
        )
        if self.intensity_check == "warn":
            log.warning("%s Predicted anyway (intensity check: warn).", text)
            return problems
        suggestion = profile.suggest_window(image, stored_dtype)
        hint = (
            f" If it is the same kind of image stored differently, give its window: "
            f"--input-window {suggestion.lo:.6g} {suggestion.hi:.6g} (Python: input_window="
            f"({suggestion.lo:.6g}, {suggestion.hi:.6g}))."
            if suggestion is not None and self.input_window is None
            else ""
        )
        raise IntensityMismatchError(
            f"{text}{hint} To predict anyway: --intensity-check warn (or off)."
        )

    def __call__(
        self, image: np.ndarray, *, stored_dtype: str = "float32", source: str = ""
    ) -> np.ndarray:
        """Translate one image given in stored/physical units.

        Args:
            image: ``(H, W)`` array in the units :func:`medi2i.data.io.read_image` returns
                (grey levels, HU, ...).
            stored_dtype: the file's stored type, needed by ``dtype`` normalisation (e.g.
                ``"uint16"`` for a 16-bit PNG; ``image.dtype`` when it is an integer array).
            source: a name for error messages.

        Returns:
            ``(H, W)`` float32 prediction in the same units.

        Raises:
            ValueError: not a 2D finite image, smaller than the generator's minimum
                (twice G's ``multiple`` on each side), or no window can be computed for it.
            IntensityMismatchError: its intensities do not match the training inputs' (with
                ``intensity_check`` ``error``).
        """
        array = np.asarray(image)
        if array.ndim != 2:
            raise ValueError(
                f"{source or 'image'}: expected a 2D (H, W) image, got shape {array.shape}"
            )
        # G halves the image log2(multiple) times; its normalisation layers need at least
        # 2x2 values per channel at the coarsest level.
        multiple = int(getattr(self.generator, "multiple", 1))
        minimum = 2 * multiple
        if min(array.shape) < minimum:
            raise ValueError(
                f"{source or 'image'}: {array.shape[0]}x{array.shape[1]} is smaller than the "
                f"generator's minimum of {minimum}x{minimum} pixels (it halves the image "
                f"{multiple.bit_length() - 1} times and needs 2x2 pixels at the coarsest level)"
            )
        if array.dtype.kind in "iu" and stored_dtype == "float32":
            stored_dtype = array.dtype.name
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise ValueError(f"{source or 'image'}: contains NaN or infinite values")
        window = self.window_for(array, stored_dtype, source)
        self.check_intensity(array, window, stored_dtype, source)
        x = torch.from_numpy(np.ascontiguousarray(self.normalizer.forward(array, window)))
        y = self.predict_normalised(x[None, None])[0, 0]
        out = self.normalizer.inverse(y.cpu().numpy().astype(np.float64), window)
        return np.asarray(out, dtype=np.float32)
