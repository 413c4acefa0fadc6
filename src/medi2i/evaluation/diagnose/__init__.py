"""Decision rules for a run: "adding D did not make results sharper - why?"

Every verdict rests on evidence that cannot mislead in the usual ways:

* **Validation, never test.** Quality numbers come from the validation split - the metrics of
  the best epoch (:meth:`RunRecord.decision_metrics`) or a fresh per-image evaluation of the
  best EMA generator on it; test metrics are shown for reference only.
* **Confidence intervals, not margins.** A run is "better" or "worse" than its baseline only
  when the 95% interval of the difference excludes zero, otherwise "within noise": a paired
  bootstrap over the validation images both runs' best EMA generators were evaluated on (one
  run per side), or a Welch t-interval over per-seed means (several runs per side). Without an
  evaluation (``evaluate=False``) single runs are compared by their logged validation means and
  the verdict says it has no interval.
* **Gradient shares, not loss-value shares.** How hard a loss term pushes G is the norm of its
  gradient on G's output (``gshare_*`` / ``gnorm_*`` in the logs); a term can hold a large,
  nearly constant value while pulling little (LSGAN with D at chance: ``(D_fake - 1)^2 ~ 0.25``).
* **Ablations above D's outputs**, and the exact command for a missing one.

The rules, in :data:`RULES` order, each a pure function returning a :class:`Decision` (a
status, the case that decided it and the evidence, no sentences) that the wording turns into a
:class:`Finding`:

1. ``diverged`` - non-finite training steps or validation values: every other finding then
   describes a broken run.
2. ``misaligned_without_r`` - misaligned pairs reach G's loss with R off: G's L1-optimal output is
   blurred whatever the loss weights; fix that before judging D or the weights.
3. ``conditional_d_misaligned`` - D is conditioned on the input while the pairs are misaligned:
   D can reward misalignment.
4. ``unstable_training`` - a loss jump or validation collapse (the run's own ``instabilities``,
   else :func:`medi2i.run.stability.find_instabilities` on its epoch log), in the run or
   its baseline: an ablation with such an arm is not trustworthy.
5. ``ablation`` - what D (and R) add against the baseline, with intervals; the command for a
   missing ablation, and the verdict about D marked provisional without one.
6. ``d_ineffective`` - ``D_real ~ D_fake`` with ``D_acc`` at chance; weighed below the ablation.
7. ``blurry_loss_weights`` - D on, outputs still blurry -> loss weights from the gradient shares.
8. ``d_clipping`` - D's gradient clipping fires on most steps -> R1 or a higher limit.
9. ``still_improving`` - a heuristic on the validation trend: train longer.

Each threshold, and how it was chosen, is documented where it is defined, in
:mod:`~medi2i.evaluation.diagnose.thresholds`.

Layout: :mod:`~medi2i.evaluation.diagnose.thresholds` (rule ids and titles, every threshold),
:mod:`~medi2i.evaluation.diagnose.evidence` (reading a run: logged means, setup, loss jumps,
config differences), :mod:`~medi2i.evaluation.diagnose.valeval` (the per-image validation
evaluation and its cache), :mod:`~medi2i.evaluation.diagnose.stats` (intervals and verdicts),
:mod:`~medi2i.evaluation.diagnose.comparison` (run side vs baseline side), the rules in
:mod:`~medi2i.evaluation.diagnose.rules` (setup, stability, D),
:mod:`~medi2i.evaluation.diagnose.ablation` (ablations and the commands for a missing one),
:mod:`~medi2i.evaluation.diagnose.weights` (blur and loss weights from gradient shares) and
:mod:`~medi2i.evaluation.diagnose.progress` (still improving),
:mod:`~medi2i.evaluation.diagnose.wording` (every sentence of the verdicts, one entry per rule
and case), :mod:`~medi2i.evaluation.diagnose.report` (``Decision``, ``Finding``, ``Diagnosis``
and the report's layout) and :mod:`~medi2i.evaluation.diagnose.core` (``diagnose_run``). Import
the public names from ``medi2i.evaluation.diagnose``; the submodules are implementation details.
"""

from __future__ import annotations

from medi2i.evaluation.diagnose.ablation import AblationPlan, ablation_plans
from medi2i.evaluation.diagnose.core import diagnose_run
from medi2i.evaluation.diagnose.report import (
    NOT_APPLICABLE,
    NOT_EVALUATED,
    NOT_TRIGGERED,
    TRIGGERED,
    Decision,
    Diagnosis,
    Finding,
    format_diagnosis,
)
from medi2i.evaluation.diagnose.stats import MetricComparison, ci_verdict, welch_interval
from medi2i.evaluation.diagnose.thresholds import (
    ACC_BAND,
    BOOTSTRAP_RESAMPLES,
    CLIP_RATE_LIMIT,
    CONFIDENCE,
    D_GAP_THRESHOLDS,
    DECISION_METRICS,
    GAN_SHARE_AIM,
    GAN_SHARE_TARGET,
    RULES,
    SHARPNESS_BLUR,
    SLOPE_DB_PER_EPOCH,
)
from medi2i.evaluation.diagnose.valeval import PerImageMetrics, evaluate_val_per_image

__all__ = [
    "ACC_BAND",
    "BOOTSTRAP_RESAMPLES",
    "CLIP_RATE_LIMIT",
    "CONFIDENCE",
    "DECISION_METRICS",
    "D_GAP_THRESHOLDS",
    "GAN_SHARE_AIM",
    "GAN_SHARE_TARGET",
    "NOT_APPLICABLE",
    "NOT_EVALUATED",
    "NOT_TRIGGERED",
    "RULES",
    "SHARPNESS_BLUR",
    "SLOPE_DB_PER_EPOCH",
    "TRIGGERED",
    "AblationPlan",
    "Decision",
    "Diagnosis",
    "Finding",
    "MetricComparison",
    "PerImageMetrics",
    "ablation_plans",
    "ci_verdict",
    "diagnose_run",
    "evaluate_val_per_image",
    "format_diagnosis",
    "welch_interval",
]
