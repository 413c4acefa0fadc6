"""The ablation's outputs: the figure of lung crops and the Markdown report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from _ablation_analysis import LABELS, METRICS, VAL_D_ACC, VAL_D_GAP, VAL_PSNR_MASK
from medi2i.run.scalars import D_ACC, D_FAKE, D_REAL


def crop_window(mask: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of a ``size`` square in the upper part of the lung in the image's right half.

    The image's right half shows the patient's left lung (radiographic display convention).
    Its lower part lies over the heart and the diaphragm, so the window is centred on the
    centroid of the lung pixels above that half's mid-height: the upper and hilar zone, where
    vessels are dense. Falls back to the whole mask, then to the image centre; the window is
    clamped inside the image.
    """
    h, w = mask.shape
    lung = mask > 0
    right = np.zeros_like(lung)
    right[:, w // 2 :] = lung[:, w // 2 :]
    for region in (right, lung):
        if region.any():
            rows = np.nonzero(region)[0]
            upper = region.copy()
            upper[int(rows.mean()) + 1 :] = False  # keeps at least the top row of the region
            rows, cols = np.nonzero(upper)
            cy, cx = float(rows.mean()), float(cols.mean())
            break
    else:
        cy, cx = h / 2.0, w / 2.0
    top = math.floor(min(max(cy - size / 2.0, 0), h - size) + 0.5)
    left = math.floor(min(max(cx - size / 2.0, 0), w - size) + 0.5)
    return top, left


def crops_figure(
    path: Path,
    arm_records: dict[str, dict],
    bench_dir: Path,
    *,
    image_index: int,
    device: str,
) -> dict[str, Any]:
    """Save the same lung crop of one test image for every arm's first-seed EMA output.

    Row 1: input, aligned truth, each arm's output (one grey window for all); row 2: each
    arm's |output - truth| on one colour scale. Titles give that image's lung PSNR / HFEN.

    Returns:
        What was shown: image name, window, error scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medi2i.data.builders import build_dataset
    from medi2i.inference import Predictor, load_generator
    from medi2i.metrics import reference_key

    outputs: dict[str, np.ndarray] = {}
    item = normalizer = None
    for arm, rec in arm_records.items():
        loaded = load_generator(
            Path(rec["run_dir"]) / "checkpoints" / "best.pt", weights="ema", device=device
        )
        if item is None:
            cfg = loaded.config.model_copy(deep=True)
            cfg.data.root, cfg.data.manifest = str(bench_dir), None
            dataset = build_dataset(cfg, "test", normalizer=loaded.normalizer, train=False)
            if not 0 <= image_index < len(dataset):
                raise ValueError(f"--crop-image {image_index} outside 0..{len(dataset) - 1}")
            item, normalizer = dataset[image_index], loaded.normalizer
        pred = Predictor(loaded, device=device).predict_normalised(item["input"][None]).cpu()
        outputs[arm] = normalizer.output_to_unit(pred[0, 0].double().numpy())

    def unit(key: str) -> np.ndarray:
        return normalizer.output_to_unit(item[key][0].double().numpy())

    reference = reference_key(item)
    x, truth, mask = unit("input"), unit(reference), item["mask"][0].numpy()
    h, w = truth.shape
    size = max(16, min(64, min(h, w) // 4))
    top, left = crop_window(mask, size)

    def crop(a: np.ndarray) -> np.ndarray:
        return a[top : top + size, left : left + size]

    shown = [crop(x), crop(truth)] + [crop(o) for o in outputs.values()]
    lo = float(min(np.percentile(c, 1) for c in shown[:2]))
    hi = float(max(np.percentile(c, 99) for c in shown[:2]))
    errors = {arm: np.abs(crop(o) - crop(truth)) for arm, o in outputs.items()}
    scale = float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]), 99.5))
    scale = scale or 1e-6

    name = item["name"]
    cols = 2 + len(outputs)
    fig, axes = plt.subplots(2, cols, figsize=(2.3 * cols, 5.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0, 0].imshow(shown[0], cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, 1].imshow(shown[1], cmap="gray", vmin=lo, vmax=hi)
    axes[0, 1].set_title(f"truth ({reference})", fontsize=9)
    image = None
    for k, (arm, out) in enumerate(outputs.items(), start=2):
        per = arm_records[arm].get("per_image") or {}
        title = arm
        if name in per.get("names", []):
            i = per["names"].index(name)
            psnr, hfen = per["psnr_mask"][i], per["hfen_mask"][i]
            if psnr is not None and hfen is not None:
                title += f"\nlung {psnr:.2f} dB, HFEN {hfen:.3g}"
        axes[0, k].imshow(crop(out), cmap="gray", vmin=lo, vmax=hi)
        axes[0, k].set_title(title, fontsize=9)
        image = axes[1, k].imshow(errors[arm], cmap="magma", vmin=0.0, vmax=scale)
        axes[1, k].set_title(f"|{arm} - truth|", fontsize=9)
    axes[1, 0].text(
        0.0,
        0.5,
        f"test image {name}\ncrop {size}x{size} at\nrow {top}, col {left}\n"
        f"(upper lung, image right half)\nEMA, first seed",
        fontsize=8,
        va="center",
        transform=axes[1, 0].transAxes,
    )
    if image is not None:
        fig.colorbar(image, ax=axes[1, 1], fraction=0.9, label="|error| (0-1 display units)")
    fig.suptitle("same lung crop, every arm (grey window shared; error scale shared)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {
        "path": str(path),
        "image": name,
        "image_index": image_index,
        "window": {"top": top, "left": left, "size": size},
        "error_scale": scale,
        "arms": list(outputs),
    }


def num_text(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _arm_cell(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "n/a"
    if stat.get("ci_low") is not None:
        return f"{num_text(stat['mean'])} ± {num_text(stat['ci_high'] - stat['mean'], 2)}"
    if stat.get("image_ci"):
        lo, hi = stat["image_ci"]
        return f"{num_text(stat['mean'])} [{num_text(lo)}, {num_text(hi)}]†"
    return num_text(stat["mean"])


def diff_cell(
    stat: dict[str, Any] | None, digits: int = 3, *, kind: str = "g", suffix: str = ""
) -> str:
    """A signed difference with its interval, ``+0.61 [+0.09, +1.13]`` (format ``kind``)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = f"{stat['mean']:+.{digits}{kind}}{suffix}"
    if stat.get("ci_low") is not None:
        text += f" [{stat['ci_low']:+.{digits}{kind}}, {stat['ci_high']:+.{digits}{kind}}]"
    return text


def share_interval_text(paired: dict[str, Any] | None) -> str:
    """The paired share and its Fieller interval as a sentence (or why there is none)."""
    if not paired or paired.get("value") is None:
        return "Paired by seed: n/a (no seed that G, G+R and the oracle all ran)."
    seeds = ", ".join(str(s) for s in paired["seeds"])
    text = f"Paired by seed ({seeds}): {100 * paired['value']:.0f}%"
    if paired.get("bounded"):
        return (
            text
            + f", 95% Fieller interval [{100 * paired['ci_low']:.0f}%, "
            + (f"{100 * paired['ci_high']:.0f}%].")
        )
    if paired["n"] < 2:
        return text + " (one seed: no interval)."
    return text + " (interval unbounded: oracle − G does not differ from zero over these seeds)."


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (arms, paired differences, floors, D, sweep)."""
    lines = [f"# Ablation: do R and D earn their place? ({report['date']})", ""]
    lines.append(
        f"Base `{report['base_config']}`, benchmark `{report['bench_dir']}`, "
        f"{'quick' if report['quick'] else 'full'} budget; test split vs the aligned truth, "
        f"best EMA weights. Extra overrides: `{' '.join(report['overrides']['user']) or 'none'}`."
    )
    if report["quick"]:
        lines += [
            "",
            "Quick budget: the runs are far from converged; this checks the machinery, "
            "its differences are not conclusions.",
        ]
    lines += ["", "## Arms (mean ± 95% t half-width over seeds)", ""]
    head = ["arm", "seeds", *(LABELS[m] for m in METRICS), "s/step", "best ep"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    any_single = False
    for arm, s in report["arms"].items():
        cells = [_arm_cell(s["metrics"][m]) for m in METRICS]
        any_single |= any(c.endswith("†") for c in cells)
        t = s["train"]
        lines.append(
            "| "
            + " | ".join(
                [
                    arm,
                    ",".join(map(str, s["seeds"])),
                    *cells,
                    num_text(t["seconds_per_step"], 3),
                    num_text(t["best_epoch"], 3),
                ]
            )
            + " |"
        )
    if any_single:
        lines.append("")
        lines.append("† one seed: 95% bootstrap CI over the test images, not over seeds.")
    lines.append("")
    lines.append("Better: higher PSNR/SSIM/BSR, lower HFEN/GMSD, sharpness ratio near 1.")

    lines += ["", "## Paired differences a - b by seed (mean [95% t-CI])", ""]
    head = [
        "a - b",
        "seeds",
        "lung PSNR dB",
        "lung HFEN %",
        "lung GMSD %",
        "lung SSIM",
        "PSNR dB",
        "img-boot lung PSNR",
        "img-boot lung HFEN",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, d in report["differences"].items():
        m = d["metrics"]
        boot = d["per_image_bootstrap"]

        def bcell(b: dict | None) -> str:
            if not b:
                return "n/a"
            return f"{b['mean']:+.3g} [{b['ci_low']:+.3g}, {b['ci_high']:+.3g}] n={b['n_images']}"

        lines.append(
            "| "
            + " | ".join(
                [
                    key,
                    ",".join(map(str, d["seeds"])),
                    diff_cell(m["psnr_mask"]),
                    diff_cell(m["hfen_mask"].get("relative_pct"), 2),
                    diff_cell(m["gmsd_mask"].get("relative_pct"), 2),
                    diff_cell(m["ssim_mask"], 2),
                    diff_cell(m["psnr"]),
                    bcell(boot.get("psnr_mask")),
                    bcell(boot.get("hfen_mask")),
                ]
            )
            + " |"
        )
    lines.append("")
    lines.append(
        "HFEN/GMSD columns: relative change 100·(a − b)/b per seed (negative = a better). "
        "img-boot: per-image paired bootstrap over the test images, pooled over shared seeds."
    )

    lines += ["", "## Floors", ""]
    for key in ("r_share", "r_share_hfen"):
        share = report.get(key)
        if share is None:
            continue
        label = LABELS[share["metric"]]
        if share.get("value") is not None:
            lines.append(
                f"R's share of the misalignment gap in {label}: {100 * share['value']:.0f}% "
                f"(G+R − G {share['gain_G_plus_R']:+.3g} of oracle − G "
                f"{share['gap_oracle']:+.3g})."
            )
            lines.append(share_interval_text(share.get("paired")))
        else:
            lines.append(f"R's share of the gap in {label}: n/a ({share.get('reason')}).")
        lines.append("")
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    for name, floor in report["floors"].items():
        if name == "D_informative":
            lines.append(
                f"- **D_informative** (no floor): abs(D_real − D_fake) "
                f"{num_text(floor['D_gap_abs'])}, D_real {num_text(floor[D_REAL])}, "
                f"D_fake {num_text(floor[D_FAKE])}, D_acc {num_text(floor[D_ACC])}; on validation "
                f"images D_acc {num_text(floor.get(VAL_D_ACC))}, D_real − D_fake "
                f"{num_text(floor.get(VAL_D_GAP))} (G+R+D, last half of training)"
            )
            continue
        lines.append(f"- **{name}**: {verdict[floor['pass']]}")
        for c in floor["checks"]:
            note = f" ({c['note']})" if c.get("note") else ""
            other = f" (best other: {c['best_other_arm']})" if c.get("best_other_arm") else ""
            lines.append(
                f"  - {c['name']}: {num_text(c['value'])} vs {num_text(c['threshold'])}, margin "
                f"{num_text(c['margin'], 3)} → {verdict[c['pass']]}{other}{note}"
            )

    lines += ["", "## D's diagnostics per arm (last half of training, mean over seeds)", ""]
    head = [
        "arm",
        "D_real",
        "D_fake",
        "abs(D_real − D_fake)",
        "D_acc",
        "val D_acc",
        "val lung PSNR by epoch",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in report["arms"].items():
        d = s["d_last_half"]
        first = next(
            (r for r in report["runs"] if r["arm"] == arm and r["group"] == "ablation"), None
        )
        curve = ""
        if first and first.get("epochs"):
            curve = " ".join(num_text(e[VAL_PSNR_MASK], 4) for e in first["epochs"])
            curve += f" (seed {first['seed']})"
        lines.append(
            f"| {arm} | {num_text(d[D_REAL]['mean'])} | {num_text(d[D_FAKE]['mean'])} | "
            f"{num_text(d['D_gap_abs']['mean'])} | {num_text(d[D_ACC]['mean'])} | "
            f"{num_text(d.get(VAL_D_ACC, {}).get('mean'))} | {curve} |"
        )

    if report.get("sweep"):
        lines += ["", "## Misalignment sweep (lung PSNR dB, one seed)", ""]
        head = ["max_px", "G", "G+R", "G+R − G", "G's loss to 0 px", "R's share", "oracle"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in report["sweep"]:
            gap, loss, share = row["gap_G+R_minus_G"], row["G_loss_to_ceiling"], row["r_share"]
            lines.append(
                f"| {row['max_px']:g} | {num_text(row['G'])} | {num_text(row['G+R'])} | "
                f"{'n/a' if gap is None else f'{gap:+.3g}'} | "
                f"{'n/a' if loss is None else f'{loss:.3g}'} | "
                f"{'n/a' if share is None else f'{100 * share:.0f}%'} | {num_text(row['oracle'])} |"
            )

    failed = [r for r in report["runs"] if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {Path(r['run_dir']).name}: {r['error']}" for r in failed]
    lines += ["", f"Total wall time {report['wall_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"
