"""Full-reference image-quality metrics, batched, for validation (torch) and offline use (numpy).

Every torch metric takes ``pred`` and ``target`` of shape (N, C, H, W) (single-channel images are
(N, 1, H, W)), an explicit ``data_range`` (the width of the intensity range, e.g. 1.0 for [0, 1],
2.0 for [-1, 1], 255 for 8-bit; it is never guessed) and an optional ``mask`` of shape
(N, 1, H, W) or (N, C, H, W), bool or float, binarised at ``> 0.5``. Each returns one value per
image, a float32 tensor of shape (N,); channels are pooled with the pixels.

=============  ==========  ===========  =====================================================
key            better      range        definition (``M`` = mask or all pixels, sums over C too)
=============  ==========  ===========  =====================================================
``psnr``       higher      (-inf, inf]  ``10·log10(data_range² / mean_M((pred − target)²))``;
                                        ``inf`` when identical inside ``M``
``ssim``       higher      [-1, 1]      mean inside ``M`` of the SSIM map of Wang et al. 2004
                                        (Gaussian window 11 px, σ 1.5, K1 0.01, K2 0.03,
                                        population covariances) over the *valid* region, i.e.
                                        the map and ``M`` both lose a 5 px border (see below)
``ms_ssim``    higher      [0, 1]       multi-scale SSIM (Wang et al. 2003, pytorch-msssim
                                        conventions), whole image only; fewer scales on
                                        images ≤ 160 px (see :func:`ms_ssim`)
``mae``        lower       [0, inf)     ``mean_M(|pred − target|)``
``bsr``        higher      (-inf, 1]    bone suppression ratio ``1 − E(pred) / E(input)``
                                        with ``E(x) = Σ_M relu(d − mean_M(d))²``,
                                        ``d = x − target``: 1 = all bone removed, 0 = as much
                                        bone left as in the input (see :func:`bsr`)
``bsr_lit``    higher      (-inf, 1]    bone suppression ratio as published (GL-LCM,
                                        BS-LDM): ``1 − Σ relu(r − mean(r))² / Σ (input −
                                        target)²``, ``r = target − pred``, whole image
                                        only; not comparable with ``bsr`` (see
                                        :func:`bsr_lit`)
``hfen``       lower       [0, inf)     ``‖LoG(pred − target)‖_M / ‖LoG(target)‖_M``, LoG
                                        σ 1.5 (Ravishankar & Bresler 2011), L2 norms over M
``gmsd``       lower       [0, 0.5]     standard deviation over ``M`` of the gradient
                                        magnitude similarity map (Xue et al. 2014), Prewitt
                                        3×3, ``c = 170/255² · data_range²``, no downsampling
``sharpness``  ≈ 1         [0, inf)     ``mean_M |∇pred| / mean_M |∇target|`` (Prewitt);
                                        secondary, fooled by checkerboard artefacts
blur_effect    lower       [0, 1]       no-reference blur of one image,
                                        :func:`skimage.measure.blur_effect` (numpy only)
=============  ==========  ===========  =====================================================

In :func:`compute_metrics` each key is the whole-image value and ``<key>_mask`` the value inside
the mask (when a mask is given); ``ms_ssim`` and ``bsr_lit`` have no masked variant.

Conventions:

* **Whole-image SSIM** equals ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=...)``. skimage filters with reflect padding
  to a full-size map and then averages ``crop(S, (win − 1) // 2)``, i.e. it drops a 5 px border;
  with an 11-tap window the cropped pixels are exactly those whose window lies inside the image,
  which is MONAI's *valid* map (``monai.metrics.regression.compute_ssim_and_cs``, computed here
  with one separable filter: :func:`medi2i.metrics.maps.ssim_and_cs`). The
  masked SSIM averages that valid map inside the mask cropped by the same 5 px on every side
  (mask pixels within 5 px of the image border do not count), so ``ssim(mask=all ones) ==
  ssim()``. ``ssim_map(full=True)`` reproduces skimage's full reflect-padded map for display.
* **GMSD / sharpness** use the valid Prewitt region (1 px border dropped, mask cropped alike);
  **HFEN** filters with reflect (scipy ``"reflect"`` = numpy ``"symmetric"``) padding and keeps
  the full size, so the mask is used as is.
* **Empty mask** (or a mask that becomes empty after the border crop) gives NaN for that image;
  the count of such images is logged at DEBUG level only (checking needs a device-to-host sync,
  so it is done only when DEBUG is enabled).
* **Precision**: inputs are cast to float32 (half and bfloat16 up, float64 down: MONAI's SSIM
  is computed in float32, as MONAI's, so all metrics share one precision) and autocast is
  disabled inside.
* **No host syncs** in the torch path: no ``.item()``, no data-dependent Python branches, and
  every filter kernel is built on the input's device (no host-to-device copies).
* **numpy**: every metric also accepts ``np.ndarray`` of shape (H, W), (N, H, W) or
  (N, C, H, W) (masks likewise) and then returns a ``float`` for (H, W) input, else a float64
  array of shape (N,) (maps come back without the added axes).

Layout: :mod:`~medi2i.metrics.fidelity` (PSNR, MAE, SSIM, MS-SSIM),
:mod:`~medi2i.metrics.detail` (HFEN, GMSD, sharpness, blur effect), :mod:`~medi2i.metrics.bone`
(the two BSRs), :mod:`~medi2i.metrics.compute` (all of them at once, maps shared),
:mod:`~medi2i.metrics.baseline` (the identity baseline); :mod:`~medi2i.metrics.maps` and
:mod:`~medi2i.metrics.checks` hold the filters, reductions and argument checks they share. The
package depends on torch, numpy and MONAI only: losses, training and evaluation all build on it.
"""

from medi2i.metrics.baseline import identity_baseline, reference_key
from medi2i.metrics.bone import bsr, bsr_lit
from medi2i.metrics.compute import METRIC_NAMES, compute_metrics
from medi2i.metrics.detail import blur_effect, gmsd, hfen, sharpness_ratio
from medi2i.metrics.fidelity import mae, ms_ssim, psnr, ssim, ssim_map
from medi2i.metrics.maps import GMSD_C_UNIT, MS_SSIM_WEIGHTS

__all__ = [
    "GMSD_C_UNIT",
    "METRIC_NAMES",
    "MS_SSIM_WEIGHTS",
    "blur_effect",
    "bsr",
    "bsr_lit",
    "compute_metrics",
    "gmsd",
    "hfen",
    "identity_baseline",
    "mae",
    "ms_ssim",
    "psnr",
    "reference_key",
    "sharpness_ratio",
    "ssim",
    "ssim_map",
]
