"""The rules' ids and titles, and the thresholds the verdicts rest on.

Each threshold, and how it was chosen, is documented where it is defined below.
"""

from __future__ import annotations

RULE_DIVERGED = "diverged"
RULE_MISALIGNED = "misaligned_without_r"
RULE_CONDITIONAL_D = "conditional_d_misaligned"
RULE_UNSTABLE = "unstable_training"
RULE_ABLATION = "ablation"
RULE_D_INEFFECTIVE = "d_ineffective"
RULE_BLURRY = "blurry_loss_weights"
RULE_D_CLIPPING = "d_clipping"
RULE_STILL_IMPROVING = "still_improving"
RULES: dict[str, str] = {
    RULE_DIVERGED: "diverged training (non-finite steps skipped, non-finite validation)",
    RULE_MISALIGNED: "misaligned pairs with R off -> blur whatever the loss weights",
    RULE_CONDITIONAL_D: "conditional D with misaligned pairs -> D can reward misalignment",
    RULE_UNSTABLE: "unstable training (loss jump / validation collapse)",
    RULE_ABLATION: "ablations: what D (and R) add, with 95% intervals",
    RULE_D_INEFFECTIVE: "D ineffective (D_real ~ D_fake)",
    RULE_BLURRY: "D on but outputs still blurry -> loss weights (gradient shares)",
    RULE_D_CLIPPING: "D's gradient clipping fires on most steps",
    RULE_STILL_IMPROVING: "still improving at the end -> train longer",
}
"""Rule id -> one-line title."""


D_GAP_THRESHOLDS: dict[str, float] = {"lsgan": 0.05, "hinge": 0.10, "bce": 0.20}
"""Mean ``|D_real - D_fake|`` (raw logits) below which D is said not to separate real from fake.

Chosen as 5% of each mode's decision scale, so the rule means the same in every mode: LSGAN
trains D towards 1 on real and 0 on fake (scale 1 -> 0.05); hinge towards the margins +1 / -1
(scale 2 -> 0.10); BCE has no target logits, so its threshold is the logit gap whose sigmoid
probabilities differ by 0.05 (``sigmoid(x) - sigmoid(-x) = tanh(x/2) = 0.05`` gives x ~ 0.1, a gap
of 0.2). For scale: in the demo G+R+D run (LSGAN) the gap stayed at 0.0002-0.002 for all
8 epochs with ``D_acc`` 0.50, two orders of magnitude below a D that has learnt anything.
"""

ACC_BAND = 0.05
"""``D_acc`` within ``0.5 +/- ACC_BAND`` counts as chance: the same 5% of the decision scale,
applied to D's per-patch accuracy (0.5 = guessing)."""

SHARPNESS_BLUR = 0.9
"""Lung sharpness ratio (output/reference gradient magnitude) below which outputs are blurry.

One-sided on purpose: a value clearly below 1 means lost edges, but a value near 1 does not
prove sharpness (it can read 0.98 on a visibly blurred, checkered output), which is why
HFEN/GMSD against the run without D, with confidence intervals, are the primary test when such
a baseline is given. 0.9 leaves a 10% margin for the ratio's spread between validation images."""

GAN_SHARE_TARGET = 30.0
"""Target for the GAN term's share, in percent - applied to the *gradient* share.

A share of the loss value would not do: the value says nothing about how hard a
term pushes G (an LSGAN term at chance holds ~0.25 while its gradient vanishes); the gradient
share (each weighted term's gradient norm on G's output over the sum of those norms) measures
exactly that push, so the target is applied to it."""

GAN_SHARE_AIM = 35.0
"""The gradient share the recommended weights aim at: a little above the target, so that the
drift of the unweighted gradient norms during training does not drop it straight back below
30%."""

CLIP_RATE_LIMIT = 0.5
"""D's clipping firing on more than half the steps means the limit is below D's typical gradient
norm, i.e. clipping rescales D's steps almost always (the user saw norms 27-40 against 5.0)."""

SLOPE_DB_PER_EPOCH = 0.1
"""A heuristic, not a significance test: validation lung PSNR rising faster than 0.1 dB/epoch
(least squares over the last epochs) means a run is still improving - at that rate 20 more
epochs would add ~2 dB, more than the differences between the experiment variants, so stopping
there compares unfinished runs. It only suggests training longer; it decides no comparison."""

CONFIDENCE = 0.95
"""Coverage of every interval the verdicts rest on."""

BOOTSTRAP_RESAMPLES = 2000
"""Bootstrap resamples for the paired per-image interval: enough for stable 2.5/97.5 percentiles
(their Monte-Carlo error is a few percent of the interval's width)."""

DECISION_METRICS: tuple[tuple[str, bool, str, str], ...] = (
    ("psnr_mask", True, "lung PSNR", " dB"),
    ("hfen_mask", False, "lung HFEN", ""),
    ("gmsd_mask", False, "lung GMSD", ""),
)
"""``(metric, higher_is_better, name, unit)`` of the metrics run-vs-baseline verdicts use:
PSNR for fidelity, HFEN and GMSD for detail (a gradient sharpness ratio is fooled by
artefacts; these compare structure)."""
