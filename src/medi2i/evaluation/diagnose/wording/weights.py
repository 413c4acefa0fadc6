"""The ``blurry_loss_weights`` rule in words: the signs of blur (or of none), the GAN term's
gradient share and the recommended loss weights."""

from __future__ import annotations

from typing import Any

from medi2i.evaluation.diagnose.report import Decision
from medi2i.evaluation.diagnose.thresholds import GAN_SHARE_AIM


def _share_text(shares: dict[str, float | None], lead: str) -> str:
    """``"GAN term's gradient share is 4%; FM 13%, recon 83%"`` (parts that are logged)."""
    names = {"gan": "GAN", "fm": "FM"}  # the other parts under their own names
    gan = shares.get("gan") or 0.0
    rest = [
        f"{names.get(p, p)} {shares[p]:.0f}%"
        for p in ("fm", "recon", "smooth", "perceptual")
        if shares.get(p) is not None and (p in ("fm", "recon") or shares[p] > 0)
    ]
    return f"{lead} {gan:.0f}%" + (f"; {', '.join(rest)}" if rest else "")


_WEIGHTS_STOP = {
    "above_target": ", already above target.",
    "no_weights": "; loss.gan_weight / loss.feat_match_weight not in the config.",
    "no_gan_gradient": "; the GAN term passes G no gradient at all, so no weight can raise its "
    "share.",
}


def _weights_text(ev: dict[str, Any], w: dict[str, Any]) -> str:
    """The GAN term's gradient share and the recommended weights (``ev``: the evidence's
    ``weights``, ``w``: the decision's ``detail["weights"]``)."""
    value_shares = ev["value_share_pct (secondary)"]
    value_text = ""
    if value_shares.get("gan") is not None:
        value_text = (
            " (Shares of the loss value, which do not measure the push on G: "
            + _share_text(value_shares, "GAN")
            + ".)"
        )
    if w["case"] == "no_gradient_shares":
        return (
            "The gradient shares (train_gshare_*) are not logged - this run predates them - so "
            "no loss weight is recommended: the value shares cannot tell how hard each term "
            "pushes G." + value_text
        )
    head = _share_text(w["shares"], "GAN term's gradient share is") + (
        f" (target > {ev['target_pct']:.0f}%)"
    )
    if w["case"] in _WEIGHTS_STOP:
        return head + _WEIGHTS_STOP[w["case"]] + value_text
    gw, fw, gw_aim = ev["gan_weight"], ev["feat_match_weight"], ev["gan_weight_for_aim"]
    recs = []
    if (fm := w.get("fm")) is not None:
        fw_aim = ev["feat_match_weight_for_aim"]
        text = (
            f"lower loss.feat_match_weight {fw:g} -> {fm['weight']:g} "
            f"(GAN gradient share ~{fm['share']:.0f}%"
        )
        if fw_aim is not None and abs(fw_aim - fm["weight"]) > 0.05 * fw:
            text += f"; {fw_aim:g} for ~{GAN_SHARE_AIM:.0f}%)"
        elif fw_aim is None:
            text += f"; even 0 gives only ~{fm['share_at_0']:.0f}%)"
        else:
            text += ")"
        recs.append(text)
    verb = "raise" if gw_aim > gw else "set"
    gan_text = f"{verb} loss.gan_weight {gw:g} -> {gw_aim:g} (~{GAN_SHARE_AIM:.0f}%)"
    if (both := ev.get("gan_weight_for_aim_at_lower_fm")) is not None:
        gan_text += (
            f", beyond the usual 2-5 range, so rather combine feat_match_weight "
            f"{fm['weight']:g} with gan_weight {both:g}"
        )
    recs.append(gan_text + ", watching stability")
    return (
        head
        + " -> the GAN term, the one that sharpens, barely moves G: "
        + "; or ".join(recs)
        + ". Estimates assume each term's gradient scales with its weight and the unweighted "
        "gradients stay as they are." + value_text
    )


_UNDECIDED = {
    "baseline_no_ci": "lung HFEN/GMSD against the run without D cannot be judged without a "
    "confidence interval",
}


def _signs(d: Decision, ev: dict[str, Any], blurry: bool) -> list[str]:
    """The signs of blur (``blurry``) or of none, in words."""
    det = d.detail
    shown = ", ".join(f"{k.split('_')[0].upper()} {v}" for k, v in det["comparisons"].items())
    texts = []
    for sign in det["blur_signs" if blurry else "sharp_signs"]:
        if sign == "sharpness":
            ratio = f"validation lung sharpness ratio {det['sharpness']:.3f}"
            limit = ev["sharpness_threshold"]
            texts.append(
                f"{ratio} < {limit}" if blurry else f"{ratio} >= {limit} (which artefacts can fool)"
            )
        elif blurry:
            texts.append(f"lung HFEN/GMSD no better than without D ({shown}, 95% CI)")
        else:
            texts.append(f"lung HFEN/GMSD better than without D ({shown})")
    return texts


def _blurry(d: Decision, ev: dict[str, Any]) -> str:
    det = d.detail
    undecided = [_UNDECIDED[u] for u in det["undecided"]]
    if d.case == "no_evidence":
        why = "; ".join(undecided) or (
            "no lung HFEN/GMSD to compare" if det["baselines"] else "no baseline without D given"
        )
        return f"Not evaluated: no validation lung sharpness ratio, and {why}."
    if d.case == "sharp":
        extra = (" " + "; ".join(undecided) + ".") if undecided else ""
        note = (
            ""
            if "baseline" in ev
            else " Give a baseline without D to compare HFEN/GMSD with intervals."
        )
        return "No sign of blur: " + "; ".join(_signs(d, ev, False)) + "." + extra + note
    if det["d_ineffective"]:
        d_text = (
            "D barely separates real from fake (see d_ineffective), so whatever weight the GAN "
            "term gets, it passes G little signal."
        )
    else:
        d_text = "D separates real from fake, so the loss weights are the lever."
    weights = _weights_text(ev["weights"], det["weights"])
    text = f"Outputs are still blurry ({'; '.join(_signs(d, ev, True))}). {weights} {d_text}"
    if det["gan_share_above_target"]:
        text += (
            " With the GAN gradient share already above target, re-weighting is not what holds "
            "sharpness back: "
            + (
                "make D useful first (capacity, learning rate, R1) and confirm with ablations"
                if det["d_ineffective"]
                else "the next levers are a perceptual loss, R1 and longer training"
            )
            + "."
        )
    return text
