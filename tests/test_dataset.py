"""Paired datasets: pairing and its errors, masks, normalisation, augmentation, determinism."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medi2i.config import (
    AugmentConfig,
    MaskConfig,
    MisalignConfig,
    NormalizationConfig,
    load_config,
)
from medi2i.data.builders import build_dataloader, build_dataset, resolve_pairs
from medi2i.data.dataset import PairedImageDataset
from medi2i.data.io import write_png
from medi2i.data.normalization import Normalizer
from medi2i.data.pairs import DatasetError, discover_pairs
from medi2i.data.transforms import PairedAugment

H, W = 24, 32  # non-square on purpose


def blob_image(seed: int, shape=(H, W)) -> np.ndarray:
    """A smooth random uint16 image with structure (so warps and flips are visible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape)
    for _ in range(4):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(2, 6) ** 2))
    img = img / img.max()
    return np.round(img * 60000 + 1000).astype(np.uint16)


def make_layout(
    root, split="train", names=("a", "b", "c"), *, mask=True, aligned=False, shape=(H, W)
):
    for i, name in enumerate(names):
        img = blob_image(i, shape)
        write_png(root / split / "input" / f"{name}.png", img)
        write_png(root / split / "target" / f"{name}.png", (img * 0.8).astype(np.uint16))
        if mask:
            write_png(root / split / "mask" / f"{name}.png", ((img > 20000) * 255).astype(np.uint8))
        if aligned:
            write_png(root / split / "aligned" / f"{name}.png", (img * 0.8).astype(np.uint16))
    return root


def dtype_normalizer(output_range=(0.0, 1.0)) -> Normalizer:
    return Normalizer(NormalizationConfig(mode="dtype", output_range=output_range))


# ------------------------------------------------------------------------------------------------
# discovery and errors
# ------------------------------------------------------------------------------------------------


def test_layout_pairs_by_name(tmp_path):
    make_layout(tmp_path, names=("x1", "x2"), aligned=True)
    recs = discover_pairs("train", root=tmp_path)
    assert [r.name for r in recs] == ["x1", "x2"]
    assert all(r.mask is not None and r.aligned is not None for r in recs)


def test_missing_partners_all_listed(tmp_path):
    make_layout(tmp_path, names=("a", "b", "c"), mask=False)
    (tmp_path / "train" / "target" / "b.png").unlink()
    write_png(tmp_path / "train" / "target" / "d.png", blob_image(9))
    with pytest.raises(DatasetError) as info:
        discover_pairs("train", root=tmp_path)
    msg = str(info.value)
    assert "2 problems" in msg
    assert "b: has input but no target" in msg
    assert "d: has target but no input" in msg


def test_size_mismatches_all_listed(tmp_path):
    make_layout(tmp_path, names=("a", "b", "c"))
    write_png(tmp_path / "train" / "target" / "a.png", blob_image(0, (H + 1, W)))
    write_png(tmp_path / "train" / "mask" / "c.png", np.zeros((H, W + 2), np.uint8))
    recs = discover_pairs("train", root=tmp_path)
    with pytest.raises(DatasetError) as info:
        PairedImageDataset(recs, dtype_normalizer())
    msg = str(info.value)
    assert "a: size mismatch" in msg and f"target {H + 1}x{W}" in msg
    assert "c: size mismatch" in msg and f"mask {H}x{W + 2}" in msg
    assert "b:" not in msg


def test_unreadable_file_named(tmp_path):
    make_layout(tmp_path, names=("a", "b"))
    (tmp_path / "train" / "input" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"b: .*b\.png"):
        PairedImageDataset(discover_pairs("train", root=tmp_path), dtype_normalizer())


def test_empty_or_missing_split(tmp_path):
    make_layout(tmp_path, names=("a",))
    for role in ("input", "target"):
        (tmp_path / "val" / role).mkdir(parents=True)
    with pytest.raises(DatasetError, match="no image pairs"):
        discover_pairs("val", root=tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        discover_pairs("test", root=tmp_path)


def write_manifest(path, rows):
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "input", "target", "mask", "aligned", "note"])
        writer.writerows(rows)
    return path


def test_manifest_relative_paths_and_errors(tmp_path):
    make_layout(tmp_path / "d", names=("a", "b"))
    good = write_manifest(
        tmp_path / "d" / "m.csv",
        [
            ["train", "train/input/a.png", "train/target/a.png", "train/mask/a.png", "", "x"],
            ["train", "train/input/b.png", "train/target/b.png", "", "", "y"],
        ],
    )
    recs = discover_pairs("train", manifest=good)
    assert [r.name for r in recs] == ["a", "b"]
    assert recs[1].mask is None
    bad = write_manifest(
        tmp_path / "d" / "bad.csv",
        [
            ["train", "train/input/a.png", "train/target/zz.png", "", "", ""],
            ["training", "train/input/b.png", "train/target/b.png", "", "", ""],
            ["train", "train/input/a.png", "train/target/a.png", "", "", ""],
            ["train", "train/input/q.png", "", "", "", ""],
        ],
    )
    with pytest.raises(DatasetError) as info:
        discover_pairs("train", manifest=bad)
    msg = str(info.value)
    assert "line 2: target file 'train/target/zz.png' not found" in msg
    assert "line 3: split 'training'" in msg
    assert "line 4: input name 'a' already used on line 2" in msg
    assert "line 5: empty 'target'" in msg


def test_manifest_missing_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("split,source\ntrain,a.png\n")
    with pytest.raises(DatasetError, match="missing column"):
        discover_pairs("train", manifest=path)


# ------------------------------------------------------------------------------------------------
# items, masks, normalisation
# ------------------------------------------------------------------------------------------------


def test_items_are_normalised_tensors(tmp_path):
    make_layout(tmp_path, names=("a", "b"), aligned=True)
    ds = PairedImageDataset(discover_pairs("train", root=tmp_path), dtype_normalizer())
    item = ds[0]
    assert set(item) >= {"input", "target", "mask", "aligned_target", "name", "window"}
    for key in ("input", "target", "mask", "aligned_target"):
        assert item[key].shape == (1, H, W) and item[key].dtype == torch.float32
    raw = blob_image(0).astype(np.float32)
    np.testing.assert_allclose(item["input"][0].numpy(), raw / 65535.0, atol=1e-7)
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
    assert item["window"].tolist() == [0.0, 65535.0]


def test_mask_absent_means_all_ones_and_batches_collate(tmp_path):
    make_layout(tmp_path, names=("a", "b", "c"), mask=False)
    ds = PairedImageDataset(discover_pairs("train", root=tmp_path), dtype_normalizer())
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["input"].shape == (3, 1, H, W)
    assert torch.all(batch["mask"] == 1)
    assert "aligned_target" not in batch


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (MaskConfig(binarize="nonzero"), [0, 1, 1, 1]),
        (MaskConfig(binarize="threshold", threshold=0.5), [0, 0, 0, 1]),
        (MaskConfig(binarize="threshold", threshold=0.01), [0, 0, 1, 1]),
        (MaskConfig(binarize="labels", labels=[3]), [0, 0, 1, 0]),
    ],
)
def test_mask_rules(tmp_path, cfg, expected):
    from medi2i.data.dataset import binarize_mask
    from medi2i.data.io import read_image

    write_png(tmp_path / "m.png", np.array([[0, 1, 3, 200]], np.uint8))
    mask, meta = read_image(tmp_path / "m.png")
    assert binarize_mask(mask, meta, cfg).ravel().tolist() == expected


@pytest.mark.parametrize("output_range", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("mode", ["fixed", "dtype", "image_percentile"])
def test_normalisation_inverse(mode, output_range):
    cfg = NormalizationConfig(
        mode=mode,
        window=(1000.0, 61000.0) if mode == "fixed" else None,
        percentiles=(0.0, 100.0),
        output_range=output_range,
    )
    norm = Normalizer(cfg)
    img = blob_image(3).astype(np.float32)
    window = norm.window_for(img, "uint16")
    y = norm.forward(img, window)
    assert y.min() >= output_range[0] and y.max() <= output_range[1]
    np.testing.assert_allclose(norm.inverse(y, window), img, rtol=0, atol=0.05)
    torch_back = norm.inverse(torch.from_numpy(y), window).numpy()
    np.testing.assert_allclose(torch_back, img, atol=0.05)


def test_dataset_percentile_fit_and_state():
    cfg = NormalizationConfig(mode="dataset_percentile", percentiles=(1.0, 99.0))
    images = [blob_image(i).astype(np.float32) for i in range(3)]
    norm = Normalizer.fit(cfg, images)
    lo, hi = np.percentile(np.concatenate([i.ravel() for i in images]), [1.0, 99.0])
    assert (norm.dataset_window.lo, norm.dataset_window.hi) == pytest.approx((lo, hi))
    again = Normalizer.from_state_dict(norm.state_dict())
    assert again.dataset_window == norm.dataset_window
    with pytest.raises(ValueError, match="needs the training split"):
        Normalizer(cfg)


def test_dtype_mode_rejects_float_files():
    norm = dtype_normalizer()
    with pytest.raises(ValueError, match=r"x\.npy.*'dtype' needs an 8/16-bit"):
        norm.window_for(np.zeros((2, 2), np.float32), "float32", "x.npy")


# ------------------------------------------------------------------------------------------------
# augmentation, misalignment, determinism
# ------------------------------------------------------------------------------------------------

STRONG = AugmentConfig(
    hflip=0.5, vflip=0.5, affine_p=1.0, rotate_deg=15, translate_frac=0.1, scale=(0.9, 1.1)
)


def test_augmentation_moves_mask_with_images(tmp_path):
    """The mask is defined by a threshold on the input; after augmentation it must still be."""
    make_layout(tmp_path, names=("a", "b", "c", "d"))
    ds = PairedImageDataset(
        discover_pairs("train", root=tmp_path),
        dtype_normalizer(),
        augment=PairedAugment(STRONG),
        seed=1,
    )
    plain = PairedImageDataset(discover_pairs("train", root=tmp_path), dtype_normalizer())
    changed = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            inp, tgt, mask = item["input"][0], item["target"][0], item["mask"][0]
            changed += int(not torch.equal(inp, plain[i]["input"][0]))
            expected = (inp > 20000 / 65535).float()
            assert (expected == mask).float().mean() > 0.97  # edges may differ by a pixel
            # target = 0.8 * input before augmentation; the same warp keeps the relation
            np.testing.assert_allclose(tgt.numpy(), 0.8 * inp.numpy(), atol=2e-3)
    assert changed >= 6  # augmentation really happens


def test_intensity_augmentation_identical_for_input_and_target(tmp_path):
    make_layout(tmp_path, names=("a",), aligned=True)
    aug = AugmentConfig(
        intensity={"p": 1.0, "gamma": [0.7, 1.4], "contrast": [0.8, 1.2], "brightness": [-0.1, 0.1]}
    )
    ds = PairedImageDataset(
        discover_pairs("train", root=tmp_path),
        dtype_normalizer(),
        augment=PairedAugment(aug),
        seed=3,
    )
    item = ds[0]
    assert torch.equal(item["target"], item["aligned_target"])  # same files -> same change
    plain = PairedImageDataset(discover_pairs("train", root=tmp_path), dtype_normalizer())[0]
    assert not torch.allclose(item["input"], plain["input"])
    assert torch.equal(item["mask"], plain["mask"])  # intensity never touches the mask


def test_determinism_across_workers_and_epochs(tmp_path):
    make_layout(tmp_path, names=tuple("abcdef"))
    cfg = load_config(
        None,
        [
            f"data.root={tmp_path}",
            "data.batch_size=3",
            "data.augment.affine_p=1",
            "data.augment.rotate_deg=10",
        ],
    )
    ds = build_dataset(cfg, "train")

    def epoch_batches(workers: int, epoch: int):
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers)
        return torch.cat([b["input"] for b in loader])

    e0 = epoch_batches(0, 0)
    assert torch.equal(e0, epoch_batches(2, 0))
    assert not torch.equal(e0, epoch_batches(0, 1))
    loader = build_dataloader(ds, cfg, shuffle=True)
    order1 = [n for b in loader for n in b["name"]]
    loader2 = build_dataloader(ds, cfg, shuffle=True)
    assert order1 == [n for b in loader2 for n in b["name"]]


def test_simulated_misalignment(tmp_path):
    make_layout(tmp_path, names=("a", "b"))
    recs = discover_pairs("train", root=tmp_path)
    ds = PairedImageDataset(recs, dtype_normalizer(), misalign=MisalignConfig(max_px=3.0), seed=0)
    plain = PairedImageDataset(recs, dtype_normalizer())
    assert ds.has_aligned_target
    item, ref = ds[0], plain[0]
    assert torch.equal(item["aligned_target"], ref["target"])
    assert torch.equal(item["input"], ref["input"])
    assert not torch.allclose(item["target"], ref["target"], atol=1e-3)
    ds.set_epoch(5)
    assert torch.equal(ds[0]["target"], item["target"])  # a pair keeps its misalignment
    off = PairedImageDataset(recs, dtype_normalizer(), misalign=MisalignConfig(max_px=0.0))
    assert not off.has_aligned_target


def test_simulated_misalignment_is_seeded_by_split(tmp_path):
    """Same image, same index, same seed: the train and val pairs still get different fields."""
    for split in ("train", "val"):
        make_layout(tmp_path, split=split, names=("a", "b"))
    misalign = MisalignConfig(max_px=3.0, splits=["train", "val"])

    def dataset(split):
        recs = discover_pairs(split, root=tmp_path)
        return PairedImageDataset(recs, dtype_normalizer(), misalign=misalign, seed=0)

    train, val = dataset("train"), dataset("val")
    t0, v0 = train[0], val[0]
    assert torch.equal(t0["aligned_target"], v0["aligned_target"])  # identical truth
    assert not torch.allclose(t0["target"], v0["target"], atol=1e-3)
    # a pair keeps its field: again, in another epoch, from a new dataset object
    assert torch.equal(train[0]["target"], t0["target"])
    val.set_epoch(3)
    assert torch.equal(val[0]["target"], v0["target"])
    assert torch.equal(dataset("val")[0]["target"], v0["target"])
    assert not torch.allclose(train[1]["target"], t0["target"], atol=1e-3)


def _misaligned_layout(root, split="train", names=("a", "b")):
    """A layout whose measured targets are the aligned targets rolled by 3 px along x."""
    make_layout(root, split=split, names=names, aligned=True)
    for name in names:
        aligned = (blob_image(names.index(name)) * 0.8).astype(np.uint16)
        write_png(root / split / "target" / f"{name}.png", np.roll(aligned, 3, axis=1))
    return root


def test_train_target_aligned_trains_on_the_aligned_target(tmp_path):
    _misaligned_layout(tmp_path, "train")
    _misaligned_layout(tmp_path, "val", names=("c",))
    measured = build_dataset(load_config(None, [f"data.root={tmp_path}"]), "train")[0]
    cfg = load_config(None, [f"data.root={tmp_path}", "data.train_target=aligned"])
    item = build_dataset(cfg, "train")[0]
    truth = (blob_image(0) * 0.8).astype(np.uint16).astype(np.float32) / 65535.0
    np.testing.assert_allclose(item["target"][0].numpy(), truth, atol=1e-7)
    assert torch.equal(item["aligned_target"], item["target"])  # still present
    assert torch.equal(item["aligned_target"], measured["aligned_target"])
    assert not torch.allclose(measured["target"], measured["aligned_target"], atol=1e-3)
    assert torch.equal(item["input"], measured["input"])
    # val is unchanged: the measured target plus the aligned truth
    val = build_dataset(cfg, "val")[0]
    plain_val = build_dataset(load_config(None, [f"data.root={tmp_path}"]), "val")[0]
    assert torch.equal(val["target"], plain_val["target"])
    assert torch.equal(val["aligned_target"], plain_val["aligned_target"])
    assert not torch.equal(val["target"], val["aligned_target"])


def test_train_target_aligned_with_simulated_misalignment(tmp_path):
    """misalign warps the aligned target exactly as it warps a dataset whose targets are it."""
    _misaligned_layout(tmp_path / "real")
    make_layout(tmp_path / "clean", names=("a", "b"))  # its targets are the aligned targets
    shift = "data.misalign.max_px=3"
    cfg = load_config(None, [f"data.root={tmp_path / 'real'}", "data.train_target=aligned", shift])
    items = build_dataset(cfg, "train")
    clean = build_dataset(load_config(None, [f"data.root={tmp_path / 'clean'}", shift]), "train")
    for i in range(2):
        assert torch.equal(items[i]["target"], clean[i]["target"])
        assert torch.equal(items[i]["aligned_target"], clean[i]["aligned_target"])
        assert not torch.allclose(items[i]["target"], items[i]["aligned_target"], atol=1e-3)


def test_train_target_aligned_without_aligned_targets_is_an_error(tmp_path):
    make_layout(tmp_path, "train", names=("a", "b"))
    make_layout(tmp_path, "val", names=("c",))
    cfg = load_config(None, [f"data.root={tmp_path}", "data.train_target=aligned"])
    with pytest.raises(DatasetError, match=r"split 'train': data.train_target 'aligned' needs"):
        build_dataset(cfg, "train")
    assert not build_dataset(cfg, "val").has_aligned_target  # only the train split needs them


@pytest.mark.parametrize(
    ("aligned", "overrides", "expected"),
    [
        (False, [], False),
        (False, ["data.pairs=misaligned"], True),
        (False, ["data.misalign.max_px=2"], True),
        (False, ["data.misalign.max_px=2", "data.misalign.splits=[val,test]"], False),
        (False, ["data.misalign.max_px=2", "data.pairs=aligned"], False),
        (True, [], True),
        (True, ["data.pairs=aligned"], False),
        (True, ["data.train_target=aligned"], False),
        (True, ["data.train_target=aligned", "data.misalign.max_px=2"], True),
    ],
)
def test_resolve_pairs(tmp_path, aligned, overrides, expected):
    make_layout(tmp_path, names=("a",), aligned=aligned)
    cfg = load_config(None, [f"data.root={tmp_path}", *overrides])
    misaligned, reason = resolve_pairs(cfg, build_dataset(cfg, "train"))
    assert misaligned is expected
    assert reason.startswith(f"data.pairs={cfg.data.pairs}")
    if expected and cfg.data.pairs == "auto":
        assert "misalign" in reason or "aligned targets" in reason


def test_build_dataset_eval_split_not_augmented(tmp_path):
    make_layout(tmp_path, split="train", names=("a", "b"))
    make_layout(tmp_path, split="val", names=("c",))
    cfg = load_config(
        None, [f"data.root={tmp_path}", "data.augment.hflip=1.0", "data.crop_size=16"]
    )
    train = build_dataset(cfg, "train")
    val = build_dataset(cfg, "val")
    assert train[0]["input"].shape == (1, 16, 16)
    assert val[0]["input"].shape == (1, H, W)
    plain = PairedImageDataset(discover_pairs("val", root=tmp_path), dtype_normalizer())
    assert torch.equal(val[0]["input"], plain[0]["input"])


def test_crop_larger_than_image_is_an_error(tmp_path):
    make_layout(tmp_path, names=("a",))
    cfg = load_config(None, [f"data.root={tmp_path}", "data.crop_size=64"])
    with pytest.raises(DatasetError, match=r"a: 24x32 is smaller than data.crop_size 64"):
        build_dataset(cfg, "train")
