"""Prediction: TTA, tiling, the Predictor API, file/folder prediction and export."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from torch import nn

from medi2i.config import Config, GeneratorConfig, NormalizationConfig
from medi2i.data.io import read_image, write_png
from medi2i.data.normalization import Normalizer
from medi2i.inference import (
    ExportError,
    LoadedGenerator,
    Predictor,
    export_generator,
    load_generator,
    parse_tta,
    predict_paths,
)
from medi2i.inference.export import EXPORT_TOLERANCE, metadata_path
from medi2i.inference.tiling import DEFAULT_TILE, even_tile, tiled_apply
from medi2i.models import build_generator
from tinydata import synthetic_pair, train_tiny_g_only, write_pairs

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A G-only run with a tiny G (8/16 channels), trained 1 epoch x 2 steps."""
    root = tmp_path_factory.mktemp("pairs")
    write_pairs(root, {"train": 4, "val": 2}, np.random.default_rng(0))
    return train_tiny_g_only(root, tmp_path_factory.mktemp("run"))


@pytest.fixture
def loaded(tiny_run) -> LoadedGenerator:
    """A fresh copy per test: a Predictor converts its G's memory format in place."""
    return load_generator(tiny_run)


class Identity(nn.Module):
    """A 'generator' that returns its input (multiplied by 1 so the output is a new tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return x * 1.0


def identity_loaded(**norm) -> LoadedGenerator:
    ncfg = NormalizationConfig(**(norm or {"mode": "fixed", "window": (0.0, 65535.0)}))
    return LoadedGenerator(
        generator=Identity(),
        config=Config(),
        normalizer=Normalizer(ncfg),
        checkpoint=Path("identity.pt"),
        weights="ema",
        epoch=None,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_dicom(path: Path, stored: np.ndarray) -> Path:
    """A minimal 16-bit MONOCHROME2 DX DICOM file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P001"
    ds.Modality = "DX"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------
# TTA
# --------------------------------------------------------------------------------------------


def test_tta_transforms_invert_exactly():
    x = torch.rand(2, 1, 23, 31)
    transforms = parse_tta(["identity", "vflip", "hflip", "shift", "shift:3", "shift:-1:2"])
    names = [t.name for t in transforms]
    assert names == [
        "identity",
        "vflip",
        "hflip",
        "shift:2:2",
        "shift:-2:-2",
        "shift:3:3",
        "shift:-3:-3",
        "shift:-1:2",
    ]
    for t in transforms:
        fx = t.forward(x)
        dy, dx = t.shift
        assert fx.shape[-2:] == (23 + abs(dy), 31 + abs(dx))
        assert torch.equal(t.inverse(fx), x), t.name
    # a shift by (+2, +2) moves the content down-right, with reflected pixels in front
    shifted = parse_tta("shift:2:2")[0].forward(x)
    assert torch.equal(shifted[..., 2:, 2:], x)
    assert torch.equal(shifted[..., 0, 2:], x[..., 2, :])


def test_tta_parse_errors_and_default():
    assert [t.name for t in parse_tta(None)] == ["identity"]
    assert [t.name for t in parse_tta([])] == ["identity"]
    with pytest.raises(ValueError, match="unknown TTA transform 'rot90'"):
        parse_tta(["rot90"])
    with pytest.raises(ValueError, match="zero shift"):
        parse_tta(["shift:0"])
    with pytest.raises(ValueError, match="larger"):
        parse_tta(["shift:40"])[0].forward(torch.rand(1, 1, 16, 16))


def test_hflip_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="medi2i.inference.tta"):
        Predictor(identity_loaded(), tta=["identity", "hflip", "hflip"])
    warnings = [r for r in caplog.records if "hflip" in r.getMessage()]
    assert len(warnings) == 1 and "anatomy" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medi2i.inference.tta"):
        Predictor(identity_loaded(), tta=["identity", "vflip", "shift"])
    assert not caplog.records


def test_identity_tta_equals_plain_prediction(loaded):
    x = torch.rand(3, 1, 37, 29)
    with torch.no_grad():
        plain = loaded.generator(x)
    # in G's own memory format the prediction is G's output to the bit
    assert torch.equal(Predictor(loaded, channels_last=False).predict_normalised(x), plain)
    identity = Predictor(loaded, tta=["identity"], channels_last=False)
    assert torch.equal(identity.predict_normalised(x), plain)


def test_tta_average_on_an_equivariant_net():
    """For the identity net every transform gives back the input, so does the average."""
    x = torch.rand(2, 1, 20, 24)
    predictor = Predictor(identity_loaded(), tta=["identity", "vflip", "hflip", "shift"])
    assert torch.allclose(predictor.predict_normalised(x), x, atol=1e-6)


def test_tta_is_the_mean_of_inverse_transformed_outputs(loaded):
    x = torch.rand(1, 1, 32, 40)
    g = loaded.generator
    with torch.no_grad():
        expected = (g(x) + g(x.flip(-2)).flip(-2)) / 2
    got = Predictor(loaded, tta=["identity", "vflip"], channels_last=False).predict_normalised(x)
    assert torch.allclose(got, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# tiling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(100, 70), (20, 20), (20, 100), (33, 32)])
def test_tiling_identity_net_is_exact_and_never_resizes(shape):
    loaded_id = identity_loaded()
    x = torch.rand(2, 1, *shape)
    out = Predictor(loaded_id, tile=32, overlap=0.25).predict_normalised(x)
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-6)
    calls = loaded_id.generator.calls
    assert calls and all(h <= 32 and w <= 32 for _, _, h, w in calls)
    if max(shape) <= 32:  # fits in one tile: predicted whole
        assert calls == [(2, 1, *shape)]


def test_tiling_close_to_whole_image_for_a_conv_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1))
    x = torch.rand(1, 1, 100, 70)
    with torch.no_grad():
        whole = net(x)
        for overlap in (0.25, 0.5):
            tiled = tiled_apply(net, x, tile=32, overlap=overlap)
            diff = (tiled - whole).abs()
            assert tiled.shape == whole.shape
            assert float(diff.mean()) < 1e-3 and float(diff.max()) < 0.02, overlap


def test_images_longer_than_the_default_tile_are_tiled_by_default():
    """Memory stays bounded by one tile's: a long image is never predicted in one pass."""
    loaded_id = identity_loaded()
    predictor = Predictor(loaded_id)
    assert predictor.tile == DEFAULT_TILE
    x = torch.rand(1, 1, DEFAULT_TILE + 100, 24)
    assert torch.allclose(predictor.predict_normalised(x), x, atol=1e-6)
    # two tiles cover 1124 px with a quarter's overlap: each the smallest that does (643 px)
    assert {call[-2:] for call in loaded_id.generator.calls} == {(643, 24)}
    loaded_id.generator.calls.clear()
    Predictor(loaded_id).predict_normalised(torch.rand(1, 1, DEFAULT_TILE, 24))
    assert loaded_id.generator.calls == [(1, 1, DEFAULT_TILE, 24)]  # fits: whole
    loaded_id.generator.calls.clear()
    Predictor(loaded_id, tile=None).predict_normalised(x)
    assert loaded_id.generator.calls == [(1, 1, DEFAULT_TILE + 100, 24)]


def _monai_tiles(side: int, tile: int, overlap: float) -> int:
    """Tiles MONAI's sliding window places along a side: integer stride, the last at the end."""
    return math.ceil((side - tile) / max(1, int(tile * (1 - overlap)))) + 1


def test_tiles_are_sized_evenly_never_larger_nor_more_numerous():
    # 2048 px in 1024-px tiles, overlap 1/4: three a side either way, 832 px (G's multiple 16)
    assert even_tile(2048, 1024, 0.25, multiple=16) == 832
    assert even_tile(900, 1024, 0.25) == 900 and even_tile(1024, 1024, 0.5) == 1024
    for side, tile, overlap, multiple in itertools.product(
        (65, 100, 257, 1000, 2048, 3001), (32, 64, 200, 1024), (0.0, 0.25, 0.5, 0.8), (1, 8, 16)
    ):
        if side <= tile:
            continue
        even = even_tile(side, tile, overlap, multiple)
        assert even <= tile
        assert _monai_tiles(side, even, overlap) <= _monai_tiles(side, tile, overlap)
        assert even == tile or even % multiple == 0
    loaded_id = identity_loaded()
    x = torch.rand(1, 1, 2048, 2048)
    assert torch.allclose(Predictor(loaded_id).predict_normalised(x), x, atol=1e-6)
    calls = loaded_id.generator.calls
    assert {c[-2:] for c in calls} == {(820, 820)} and sum(c[0] for c in calls) == 9


@pytest.mark.parametrize("norm", ["none", "group"])
def test_tiled_and_whole_disagree_only_through_normalisation_layers(norm):
    """The UNet without normalisation layers gives the same output tiled or whole (blended
    overlaps hide the tile borders); with GroupNorm, whose statistics are taken over the
    extent G is given, the outputs differ - the documented reason tiles and whole images
    disagree."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(
        preset="custom",
        base_channels=8,
        channel_mults=[1, 2],
        res_blocks=1,
        norm=norm,
        activation="silu",
        dropout=0.0,
        attention=False,
        out_activation="none",
        residual_output=True,
        upsample="bilinear",
    )
    g = build_generator(cfg, output_range=(0.0, 1.0)).eval()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    x = 0.4 + 0.2 * torch.sin(6 * xx) * torch.cos(5 * yy) + 0.2 * (torch.sin(20 * yy) > 0.6)
    x = x[None, None]
    with torch.no_grad():
        whole = g(x)
        tiled = tiled_apply(g, x, tile=64, overlap=0.5)
    change = float((whole - x).abs().mean())
    gap = (tiled - whole).abs()
    if norm == "none":
        assert float(gap.mean()) < 1e-3 * change and float(gap.max()) < 1e-3
    else:
        assert float(gap.mean()) > 0.1 * change


def test_tiled_generator_runs_at_any_size(loaded):
    predictor = Predictor(loaded, tile=16, overlap=0.5, batch_size=3)
    for shape in ((45, 37), (12, 50), (8, 8)):
        x = torch.rand(1, 1, *shape)
        assert predictor.predict_normalised(x).shape == x.shape


def test_channels_last_is_the_cpu_default_and_changes_nothing_but_speed(tiny_run):
    fresh = load_generator(tiny_run)  # its own copy: the predictor converts G in place
    plain = Predictor(load_generator(tiny_run), channels_last=False, tile=16, overlap=0.5)
    fast = Predictor(fresh)
    assert fast.memory_format == torch.channels_last
    assert any(  # G's convolution weights were converted
        p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in fresh.generator.parameters()
    )
    assert plain.memory_format == torch.contiguous_format
    x = torch.rand(2, 1, 40, 36)
    whole = Predictor(load_generator(tiny_run), channels_last=False).predict_normalised(x)
    out = fast.predict_normalised(x)
    assert out.is_contiguous() and out.shape == x.shape
    assert torch.allclose(out, whole, atol=1e-5, rtol=0)
    fast.tile, fast.overlap = 16, 0.5  # the tiled path converts every tile
    assert torch.allclose(fast.predict_normalised(x), plain.predict_normalised(x), atol=1e-5)


def test_bf16_precision_runs_the_convolutions_in_bf16_and_returns_float32(tiny_run):
    exact = Predictor(load_generator(tiny_run), tile=16, overlap=0.5)
    fast = Predictor(load_generator(tiny_run), tile=16, overlap=0.5, precision="bf16")
    conv_dtypes = []
    conv = next(m for m in fast.generator.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda module, args, out: conv_dtypes.append(out.dtype))
    x = torch.rand(2, 1, 40, 36)
    want, got = exact.predict_normalised(x), fast.predict_normalised(x)
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    assert got.dtype == torch.float32 and got.shape == x.shape
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9): the outputs differ, by
    # little against the [0, 1] range
    assert not torch.equal(got, want)
    assert float((got - want).abs().max()) < 0.05
    assert fast.describe()["precision"] == "bf16" and exact.describe()["precision"] == "fp32"


def test_bf16_on_a_cpu_without_native_bfloat16_warns(loaded, monkeypatch, caplog):
    import medi2i.utils.precision as precision

    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="medi2i.utils.precision"):
        Predictor(loaded, precision="bf16")
    assert any("no native bfloat16" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="medi2i.utils.precision"):
        Predictor(loaded, precision="bf16")
    assert not caplog.records


def test_a_precision_the_device_cannot_run_is_refused(loaded):
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        Predictor(loaded, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'int8'"):
        Predictor(loaded, precision="int8")


def test_an_image_smaller_than_the_generator_minimum_is_refused(loaded):
    predictor = Predictor(loaded, intensity_check="off")  # constant images: size is the point
    minimum = 2 * loaded.generator.multiple  # 2x2 pixels at G's coarsest level
    assert minimum > 2
    with pytest.raises(ValueError, match=rf"tiny\.png: 1x1 is smaller .* {minimum}x{minimum}"):
        predictor(np.zeros((1, 1), np.uint16), stored_dtype="uint16", source="tiny.png")
    with pytest.raises(ValueError, match="smaller than the generator's minimum"):
        predictor(np.zeros((minimum - 1, 64), np.uint16), stored_dtype="uint16")
    out = predictor(np.full((minimum, minimum), 1000, np.uint16), stored_dtype="uint16")
    assert out.shape == (minimum, minimum)


def test_bad_tiling_settings():
    with pytest.raises(ValueError, match="overlap"):
        Predictor(identity_loaded(), tile=32, overlap=1.0)
    with pytest.raises(ValueError, match="tile"):
        Predictor(identity_loaded(), tile=4)


# --------------------------------------------------------------------------------------------
# Predictor: units
# --------------------------------------------------------------------------------------------


def test_predictor_returns_the_input_units_fixed_window():
    image = np.random.default_rng(0).integers(0, 65536, size=(21, 34)).astype(np.uint16)
    out = Predictor(identity_loaded())(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, image, atol=0.02)


def test_predictor_returns_the_input_units_dtype_mode_minus1_1():
    image = np.random.default_rng(1).integers(0, 256, size=(16, 18)).astype(np.uint8)
    predictor = Predictor(identity_loaded(mode="dtype", output_range=(-1.0, 1.0)))
    np.testing.assert_allclose(predictor(image), image, atol=1e-4)
    with pytest.raises(ValueError, match="dtype"):
        predictor(image.astype(np.float32), stored_dtype="float32")


def test_predictor_image_percentile_window_is_per_image():
    rng = np.random.default_rng(2)
    predictor = Predictor(identity_loaded(mode="image_percentile", percentiles=(0.0, 100.0)))
    for lo, hi in ((-1000.0, 1000.0), (0.0, 5.0)):
        image = rng.uniform(lo, hi, size=(20, 20)).astype(np.float32)
        np.testing.assert_allclose(predictor(image), image, atol=1e-5 * (hi - lo))


def test_predictor_from_run_keeps_size(tiny_run):
    predictor = Predictor.from_run(tiny_run, tta=["identity", "vflip"])
    image = np.random.default_rng(3).integers(0, 65536, size=(45, 37)).astype(np.uint16)
    out = predictor(image)
    assert out.shape == (45, 37) and out.dtype == np.float32 and np.isfinite(out).all()
    assert predictor.describe()["tta"] == ["identity", "vflip"]
    with pytest.raises(ValueError, match="2D"):
        predictor(np.zeros((2, 8, 8)))


# --------------------------------------------------------------------------------------------
# predict_paths
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    folder = tmp_path / "in"
    rng = np.random.default_rng(4)
    # a chest-like image in the training inputs' intensity range (predict checks it)
    make_dicom(folder / "chest.dcm", synthetic_pair(rng, 40)[0][:, :36])
    write_png(folder / "sub" / "xray.png", rng.integers(0, 65536, size=(33, 30)).astype(np.uint16))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_folder_mixing_dicom_png_and_corrupt(loaded, mixed_folder, tmp_path, caplog):
    before = {p: sha256(p) for p in mixed_folder.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="medi2i.inference.predict"):
        summary = predict_paths(Predictor(loaded), [mixed_folder], out, progress=False)
    assert sorted(p.relative_to(out).as_posix() for p in summary.ok) == [
        "chest.dcm",
        "sub/xray.png",
    ]
    assert len(summary.failed) == 1 and summary.exit_code == 1
    bad, reason = summary.failed[0]
    assert bad.name == "broken.png" and reason
    assert any(
        "broken.png" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records
    )
    assert "1 failed" in summary.line()
    # DICOM: DERIVED, new UIDs, same geometry
    src = pydicom.dcmread(mixed_folder / "chest.dcm")
    dst = pydicom.dcmread(out / "chest.dcm")
    assert dst.ImageType[0] == "DERIVED"
    assert dst.SOPInstanceUID != src.SOPInstanceUID
    assert dst.SeriesInstanceUID != src.SeriesInstanceUID
    assert dst.pixel_array.shape == src.pixel_array.shape
    # PNG: 16-bit, same shape
    png, meta = read_image(out / "sub" / "xray.png")
    assert meta.format == "png" and meta.stored_dtype == "uint16" and png.shape == (33, 30)
    # inputs untouched, nothing written next to them
    assert {p: sha256(p) for p in mixed_folder.rglob("*") if p.is_file()} == before


def test_predict_command_with_bf16_precision_writes_the_chest(tiny_run, mixed_folder, tmp_path):
    from medi2i.cli import main

    chest = mixed_folder / "chest.dcm"
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["predict", "--run", str(tiny_run), "--input", str(chest), "--output", str(out)]
        assert main([*args, "--precision", precision, "--no-progress"]) == 0
        outs[precision] = pydicom.dcmread(out / "chest.dcm").pixel_array.astype(np.float64)
    # the same image within bfloat16's rounding: this tiny G is barely trained, so the rounding
    # shows (a trained G on the benchmark: +-0.03 dB lung PSNR); 1% of the 16-bit range is 655
    assert outs["bf16"].shape == outs["fp32"].shape
    assert not np.array_equal(outs["bf16"], outs["fp32"])  # the option reached G
    assert np.abs(outs["bf16"] - outs["fp32"]).mean() < 0.01 * 65535


def test_predict_refuses_output_equal_to_or_inside_input(loaded, mixed_folder):
    predictor = Predictor(loaded)
    for out in (mixed_folder, mixed_folder / "sub", mixed_folder / "new"):
        with pytest.raises(ValueError, match="input folder"):
            predict_paths(predictor, [mixed_folder], out, progress=False)
    with pytest.raises(ValueError, match="holds the input"):
        predict_paths(predictor, [mixed_folder / "chest.dcm"], mixed_folder, progress=False)
    assert not (mixed_folder / "new").exists()


def test_predict_names_link_loops_and_broken_links(loaded, tmp_path):
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "a.png").symlink_to(folder / "b.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    (folder / "gone.png").symlink_to(folder / "deleted.png")
    files = [folder / "a.png", folder / "gone.png"]
    summary = predict_paths(Predictor(loaded), files, tmp_path / "out", progress=False)
    reasons = dict((p.name, r) for p, r in summary.failed)
    assert reasons["a.png"] == "symbolic link loop"
    assert reasons["gone.png"].startswith("broken symbolic link")


def test_predict_checks_the_output_folder_before_predicting(loaded, mixed_folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the output folder should go")
    predictor = Predictor(loaded)
    calls = []
    real = predictor.predict_normalised
    predictor.predict_normalised = lambda x: calls.append(1) or real(x)
    with pytest.raises(ValueError, match=r"output folder .*a_file/out is not writable"):
        predict_paths(predictor, [mixed_folder], blocker / "out", progress=False)
    assert not calls  # refused before any image was predicted


def test_predict_stops_on_a_full_disk(loaded, mixed_folder, tmp_path, monkeypatch):
    import errno

    import medi2i.inference.predict as predict_mod

    written = []
    real_write = predict_mod.write_image

    def filling_write(dest, *args, **kwargs):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(dest)
        return real_write(dest, *args, **kwargs)

    monkeypatch.setattr(predict_mod, "write_image", filling_write)
    files = [mixed_folder / "sub" / "xray.png", mixed_folder / "chest.dcm", mixed_folder / "x"]
    summary = predict_paths(Predictor(loaded), files, tmp_path / "out", progress=False)
    assert [p.name for p in summary.ok] == ["xray.png"]
    reasons = [r for _, r in summary.failed]
    assert reasons[0].startswith("no space left on device while writing")
    assert reasons[1] == "not attempted: the output disk is full"
    assert summary.exit_code == 1


def test_predict_single_files_skip_existing_and_overwrite(loaded, mixed_folder, tmp_path):
    predictor = Predictor(loaded)
    out = tmp_path / "single"
    files = [mixed_folder / "sub" / "xray.png", mixed_folder / "chest.dcm"]
    first = predict_paths(predictor, files, out, progress=False)
    assert [p.name for p in first.ok] == ["xray.png", "chest.dcm"] and not first.failed
    assert first.exit_code == 0
    stamp = (out / "xray.png").stat().st_mtime_ns
    second = predict_paths(predictor, files, out, progress=False)
    assert not second.ok and len(second.skipped) == 2
    assert (out / "xray.png").stat().st_mtime_ns == stamp
    third = predict_paths(predictor, files[:1], out, progress=False, overwrite=True)
    assert [p.name for p in third.ok] == ["xray.png"]
    missing = predict_paths(predictor, [tmp_path / "nope.png"], out, progress=False)
    assert missing.failed and "not found" in missing.failed[0][1]


def test_predict_refuses_colliding_outputs(loaded, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        write_png(folder / "x.png", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="same output"):
        predict_paths(Predictor(loaded), [a, b], tmp_path / "out", progress=False)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_torchscript_matches_eager(tiny_run, loaded, tmp_path):
    path = export_generator(tiny_run, tmp_path / "g.ts", example_size=32)
    model = torch.jit.load(str(path))
    for shape in ((1, 1, 32, 32), (2, 1, 45, 37), (1, 1, 3, 5)):
        x = torch.rand(shape)
        with torch.no_grad():
            assert (model(x) - loaded.generator(x)).abs().max() <= EXPORT_TOLERANCE, shape
    meta = json.loads(metadata_path(path).read_text())
    assert meta["check"]["max_abs_diff"] <= EXPORT_TOLERANCE
    assert meta["normalization"]["config"]["mode"] == "dtype"
    assert meta["intensity_profile"]["stored_dtypes"] == ["uint16"]  # the training inputs'

    assert meta["weights"] == "ema" and meta["config"]["model"]["G"]["base_channels"] == 8


@pytest.mark.skipif(importlib.util.find_spec("onnx") is not None, reason="onnx is installed")
def test_export_onnx_without_onnx_is_a_clear_error(tiny_run, tmp_path):
    with pytest.raises(ExportError, match="pip install onnx"):
        export_generator(tiny_run, tmp_path / "g.onnx", format="onnx")
    assert not (tmp_path / "g.onnx").exists()
