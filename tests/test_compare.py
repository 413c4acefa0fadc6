"""The compare report: one self-contained HTML file (well-formed, figures embedded as base64 PNG)
plus report.md with linked PNGs, built from tiny real runs and a synthetic one."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from medi2i.evaluation.compare import compare_runs
from medi2i.evaluation.compare.crops import densest_window, pick_crops
from medi2i.evaluation.runs import load_run, resolve_data_paths
from medi2i.training.trainer import train
from tinydata import tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_cfg(root: Path, *overrides: str):
    return tiny_config(
        root,
        "model.G.residual_output=false",  # these runs use the plain (non-residual) small G
        "train.steps_per_epoch=2",
        "train.ema_decay=0.9",
        "logging.tensorboard=false",
        "eval.sample_count=1",
        *overrides,
    )


@pytest.fixture(scope="module")
def runs(dataset_root, tmp_path_factory) -> dict[str, Path]:
    """A real G-only run, a real G+D run (FM 2) and a synthetic G+D run without checkpoint."""
    base = tmp_path_factory.mktemp("runs")
    g_only = base / "g_only"
    train(_tiny_cfg(dataset_root, "train.epochs=1", "model.D.enabled=false"), out=str(g_only))
    gd = base / "gd_fm2"
    cfg = _tiny_cfg(
        dataset_root, "train.epochs=2", "model.D.enabled=true", "loss.feat_match_weight=2.0"
    )
    train(cfg, out=str(gd))
    synthetic = base / "synthetic"
    (synthetic / "metrics").mkdir(parents=True)
    config = {
        "model": {"R": {"enabled": True}, "D": {"enabled": True}},
        "loss": {"gan_weight": 3.0, "feat_match_weight": 10.0},
    }
    (synthetic / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        {
            "epoch": e,
            "val_psnr_mask": 20.0 + e,
            "val_hfen_mask": 1.0 / e,
            "train_D_real": 0.6,
            "train_D_fake": 0.3,
            "train_share_gan": 40.0,
            "train_share_recon": 60.0,
            "lr_G": 1e-4,
        }
        for e in (1, 2, 3)
    ]
    (synthetic / "metrics" / "epochs.jsonl").write_text("\n".join(map(json.dumps, rows)))
    return {"g_only": g_only, "gd": gd, "synthetic": synthetic}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = compare_runs(
        [runs["g_only"], runs["gd"], runs["synthetic"]], out, crops=2, crop_size=24
    )
    return result, out


def test_html_is_well_formed_and_self_contained(report):
    result, out = report
    text = out.read_text(encoding="utf-8")
    # XML-parsable once the HTML5 doctype is dropped: every tag closed, attributes quoted
    root = ET.fromstring(text.replace("<!DOCTYPE html>", "", 1))
    assert root.tag == "html"
    parser = _Collector()
    parser.feed(text)
    assert {"table", "h1", "img"} <= set(parser.tags)
    # no external resources: every image is inline, nothing is linked or fetched
    assert all(src.startswith("data:image/png;base64,") for src in parser.imgs)
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text)
    assert "<script" not in text and "<link" not in text
    figures = list(Path(result["figures_dir"]).glob("*.png"))
    assert len(parser.imgs) >= len(figures) >= 5 + 2  # 5 curve figures + 2 crops
    assert result["embedded_images"] == len(parser.imgs)
    for src in parser.imgs:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_table_has_each_run_label_and_identity_row(report, runs):
    result, out = report
    root = ET.fromstring(out.read_text(encoding="utf-8").replace("<!DOCTYPE html>", "", 1))
    table = next(t for t in root.iter("table") if t.get("id") == "metrics")
    cells = [["".join(td.itertext()) for td in tr] for tr in table.iter("tr")]
    labels = {r["label"] for r in result["runs"]}
    assert labels == {"G", "G+D fm=2.0 gan=0.05", "G+R+D fm=10.0 gan=3.0"}
    for label in labels:
        assert any(row[1] == label for row in cells[1:]), label
    identity = [row for row in cells if row[0] == "identity"]
    assert len(identity) == 1 and identity[0][2].startswith("test")
    real = load_run(runs["gd"])
    psnr_identity = real.identity_metrics()["psnr_mask"]
    assert identity[0][3] == f"{psnr_identity:.2f}"
    synthetic_row = next(row for row in cells if row[0] == "synthetic")
    assert synthetic_row[2] == "val, epoch 3" and synthetic_row[3] == "23.00"


def test_markdown_twin_links_existing_pngs(report):
    result, out = report
    md = Path(result["markdown"])
    assert md == out.with_suffix(".md") and md.is_file()
    text = md.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(result["figures"])
    for link in links:
        assert link.startswith("report_files/")
        assert (md.parent / link).read_bytes().startswith(PNG_MAGIC)
    assert "| identity |" in text.replace("*", "")
    assert "G+D fm=2.0 gan=0.05" in text


def test_crops_rendered_for_checkpointed_runs_only(report):
    result, _ = report
    assert result["crops"] == 2
    assert any("synthetic: no checkpoint" in n for n in result["notes"])


def test_diagnoses_use_the_run_without_d_as_baseline(report):
    result, out = report
    assert set(result["diagnoses"]) == {"g_only", "gd_fm2", "synthetic"}
    text = out.read_text(encoding="utf-8")
    assert "weighed against: g_only" in text
    assert "does not prove D useless" in text or "D separates real from fake" in text


def test_compare_without_crops_or_d_runs(runs, tmp_path):
    result = compare_runs([runs["g_only"]], tmp_path / "one" / "r.html", crops=0)
    names = {Path(p).name for p in result["figures"]}
    assert "discriminator.png" not in names and not any(n.startswith("crop") for n in names)
    assert (tmp_path / "one" / "r.md").is_file() and (tmp_path / "one" / "r_files").is_dir()
    assert any("D_real vs D_fake: not logged" in n for n in result["notes"])


def test_compare_rejects_non_runs(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        compare_runs([], tmp_path / "r.html")
    (tmp_path / "nope").mkdir()
    with pytest.raises(ValueError, match="not a run directory"):
        compare_runs([tmp_path / "nope"], tmp_path / "r.html")


def test_data_root_override_and_fallback(runs, dataset_root, tmp_path, monkeypatch):
    cfg = _tiny_cfg(Path("pairs_moved"))
    assert resolve_data_paths(cfg, tmp_path, str(dataset_root)).data.root == str(dataset_root)
    # a relative root not found from the cwd is looked up beside the run directory
    shutil.copytree(dataset_root, tmp_path / "pairs_moved")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    resolved = resolve_data_paths(cfg, tmp_path / "run", None).data.root
    assert Path(resolved).resolve() == (tmp_path / "pairs_moved").resolve()


def test_densest_window_finds_the_lung():
    mask = np.zeros((64, 80), bool)
    mask[30:60, 40:72] = True
    density, top, left = densest_window(mask, 24)
    assert density == 1.0
    assert 30 <= top <= 36 and 40 <= left <= 48


def test_headless_chromium_renders_the_report(report, tmp_path, chromium):
    _, out = report
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            str(chromium),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            out.resolve().as_uri(),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10  # text, tables and plots, not a blank page


def test_pick_crops_prefers_dense_and_varied_spots():
    mask = np.zeros((64, 96), bool)
    mask[8:56, 4:44] = True  # "right lung"
    mask[8:56, 52:92] = True  # "left lung"
    picks = pick_crops([mask, mask.copy()], 3, 32)
    assert len(picks) == 3
    assert [d for d, *_ in picks[:2]] == [1.0, 1.0] and picks[2][0] >= 0.5
    lefts = sorted(left for *_, left in picks)
    assert lefts[0] < 44 - 32 + 1 and lefts[-1] >= 52  # both lungs shown
    assert {index for _, index, _, _ in picks} == {0, 1}


def test_renderers_escape_the_model_text():
    """The HTML template is autoescaped; Markdown table cells keep to one cell and one line."""
    from medi2i.evaluation.compare.model import (
        MetricCell,
        MetricRow,
        MetricsTable,
        ReportFigure,
        ReportModel,
        RunEntry,
    )
    from medi2i.evaluation.compare.render import render_html, render_markdown

    row = MetricRow("a|b", "G <b>", "test", [MetricCell("1.00", best=True)], "-", "1", "0 s")
    model = ReportModel(
        stamp="now",
        runs=[RunEntry("a|b", "G <b>", "/runs/a")],
        table=MetricsTable(["run", "setup", "metrics from"], ["PSNR"], ["x", "y", "z"], [row]),
        diagnoses=[],
        curves=[ReportFigure("curve", "A <curve>", "caption & more", PNG_MAGIC)],
        crops=[],
        notes=["<script>alert(1)</script>"],
    )
    html_text = render_html(model)
    assert "<script" not in html_text and "&lt;script&gt;" in html_text
    assert "G &lt;b&gt;" in html_text and "caption &amp; more" in html_text
    assert ET.fromstring(html_text.replace("<!DOCTYPE html>", "", 1)).tag == "html"
    md = render_markdown(model, "r_files")
    assert "| a\\|b | G <b> | test | **1.00** | - | 1 | 0 s |" in md
    assert "![A <curve>](r_files/curve.png)" in md and "No crops could be rendered." in md
