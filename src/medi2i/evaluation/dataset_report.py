"""What ``medi2i data check`` reports about a dataset: pairs, sizes, aligned targets and the
identity baseline (the input taken as the prediction) of every split."""

from __future__ import annotations

from collections.abc import Sequence

from medi2i.config import Config
from medi2i.data.builders import build_dataset, build_normalizer
from medi2i.data.pairs import DatasetError
from medi2i.metrics import identity_baseline

__all__ = ["dataset_report", "format_dataset_report"]


def dataset_report(
    cfg: Config, splits: Sequence[str], *, baseline: bool = True
) -> tuple[dict[str, dict], list[str]]:
    """Check and describe each split of the config's dataset.

    Args:
        cfg: the config (``data`` section: root or manifest, normalisation, mask).
        splits: the splits to read.
        baseline: also compute the identity baseline's mean metrics of each split.

    Returns:
        ``(report, problems)``: per readable split ``{"pairs", "image_shape",
        "aligned_target"[, "identity_baseline"]}``, and the error of every split that could
        not be read (a split's problems do not stop the others).

    Raises:
        DatasetError, ValueError: the normaliser cannot be built (e.g. dataset percentiles of
            an unreadable training split).
    """
    normalizer = build_normalizer(cfg)
    lo, hi = cfg.data.normalization.output_range
    problems: list[str] = []
    report: dict[str, dict] = {}
    for split in splits:
        try:
            dataset = build_dataset(cfg, split, normalizer=normalizer, train=False)
        except (DatasetError, ValueError) as exc:
            problems.append(str(exc))
            continue
        entry: dict = {
            "pairs": len(dataset),
            "image_shape": list(dataset.image_shape),
            "aligned_target": dataset.has_aligned_target,
        }
        if baseline:
            means, ref = identity_baseline(dataset, data_range=hi - lo)
            entry["identity_baseline"] = {"reference": ref, **means}
        report[split] = entry
    return report, problems


def format_dataset_report(report: dict[str, dict]) -> str:
    """The report as the lines ``medi2i data check`` prints."""
    lines = []
    for split, entry in report.items():
        h, w = entry["image_shape"]
        lines.append(
            f"{split:5s}: {entry['pairs']} pairs, {h}x{w}, aligned target: "
            f"{'yes' if entry['aligned_target'] else 'no'}"
        )
        base = entry.get("identity_baseline")
        if base:
            lines.append(
                f"       identity baseline vs {base['reference']}: "
                f"PSNR {base['psnr']:.2f} dB (lung {base['psnr_mask']:.2f}), "
                f"SSIM {base['ssim']:.4f} (lung {base['ssim_mask']:.4f})"
            )
    return "\n".join(lines)
