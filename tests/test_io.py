"""Tests for medi2i.data.io: real files written with pydicom, nibabel, Pillow, tifffile, numpy."""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from medi2i.data.io import (
    SUPPORTED_SUFFIXES,
    ImageIOError,
    ImageMeta,
    detect_format,
    is_image_file,
    read_image,
    read_png,
    write_image,
    write_png,
)

ROWS, COLS = 16, 20  # non-square so that a transpose cannot go unnoticed


def ramp(dtype=np.uint16, lo: int = 0, hi: int = 4000) -> np.ndarray:
    """A deterministic (ROWS, COLS) image with distinct values."""
    values = np.linspace(lo, hi, ROWS * COLS).round().reshape(ROWS, COLS)
    return values.astype(dtype)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    bits_stored: int | None = None,
    implicit: bool = False,
    samples: int = 1,
    with_pixels: bool = True,
) -> Path:
    """Write a CT-like DICOM file with the given stored pixel values (2D, or 3D = frames)."""
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = CTImageStorage
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P001"
    ds.PatientName = "Test^Patient"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "chest"
    ds.PixelSpacing = [0.7, 0.8]
    ds.Rows, ds.Columns = stored.shape[-2], stored.shape[-1]
    if stored.ndim == 3 and samples == 1:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = stored.shape[0], stored.shape[1]
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_nifti(path: Path, data: np.ndarray, *, affine: np.ndarray | None = None) -> Path:
    if affine is None:
        affine = AFFINE
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.to_filename(str(path))
    return path


# rotation about z by 30 degrees, anisotropic spacing, translation
_c, _s = np.cos(np.pi / 6), np.sin(np.pi / 6)
AFFINE = np.array(
    [
        [0.7 * _c, -0.8 * _s, 0.0, -12.5],
        [0.7 * _s, 0.8 * _c, 0.0, 30.25],
        [0.0, 0.0, 2.5, -100.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


# --------------------------------------------------------------------------------------------
# Round trips for every format
# --------------------------------------------------------------------------------------------


def _make_source(kind: str, folder: Path, stored: np.ndarray) -> Path:
    """Write ``stored`` (integer values) in one of the supported formats."""
    if kind == "png8":
        return write_png(folder / "src.png", stored.astype(np.uint8))
    if kind == "png16":
        return write_png(folder / "src.png", stored.astype(np.uint16))
    if kind == "tiff":
        path = folder / "src.tif"
        tifffile.imwrite(path, stored.astype(np.uint16))
        return path
    if kind == "npy":
        path = folder / "src.npy"
        np.save(path, stored.astype(np.int16))
        return path
    if kind == "dicom":
        return make_dicom(folder / "src.dcm", stored.astype(np.int16))
    if kind == "nifti":
        return make_nifti(folder / "src.nii.gz", stored.astype(np.int16))
    raise AssertionError(kind)


ALL_KINDS = ["png8", "png16", "tiff", "npy", "dicom", "nifti"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_round_trip_is_exact(tmp_path: Path, kind: str) -> None:
    stored = ramp(np.uint16, 0, 250)
    src = _make_source(kind, tmp_path, stored)
    arr, meta = read_image(src)
    assert arr.dtype == np.float32 and arr.shape == (ROWS, COLS) == meta.shape
    assert arr.flags.c_contiguous
    out = write_image(tmp_path / ("out" + "".join(src.suffixes)), arr, meta)
    again, meta2 = read_image(out)
    np.testing.assert_array_equal(again, arr)
    assert meta2.format == meta.format
    assert meta2.stored_dtype == meta.stored_dtype
    restored = pickle.loads(pickle.dumps(meta))  # DataLoader workers pickle the meta
    assert restored.shape == meta.shape and restored.format == meta.format
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_orientation_row_col(tmp_path: Path, kind: str) -> None:
    stored = np.zeros((ROWS, COLS), dtype=np.uint16)
    stored[2, 5] = 200
    src = _make_source(kind, tmp_path, stored)
    arr, _ = read_image(src)
    assert arr.shape == (ROWS, COLS)
    offset = -1024.0 if kind == "dicom" else 0.0  # CT rescale intercept
    peak = np.unravel_index(np.argmax(arr), arr.shape)
    assert peak == (2, 5)
    assert arr[2, 5] == 200 + offset


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_read_does_not_modify_input(tmp_path: Path, kind: str) -> None:
    src = _make_source(kind, tmp_path, ramp(np.uint16, 0, 250))
    before = (sha256(src), src.stat().st_mtime_ns)
    arr, meta = read_image(src)
    write_image(tmp_path / ("copy" + "".join(src.suffixes)), arr + 1, meta)
    assert (sha256(src), src.stat().st_mtime_ns) == before


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_refuses_to_overwrite_input(tmp_path: Path, kind: str, monkeypatch) -> None:
    src = _make_source(kind, tmp_path, ramp(np.uint16, 0, 250))
    before = sha256(src)
    arr, meta = read_image(src)
    with pytest.raises(ImageIOError, match="overwrite the input"):
        write_image(src, arr, meta)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageIOError, match="overwrite the input"):
        write_image(Path(".") / src.name, arr, meta)
    assert sha256(src) == before


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------


def test_png16_exact_values_including_extremes(tmp_path: Path) -> None:
    stored = ramp(np.uint16, 0, 65535)
    stored[0, 0], stored[-1, -1], stored[3, 7] = 0, 65535, 12345
    path = write_png(tmp_path / "x.png", stored)
    raw = read_png(path)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, stored)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # 16-bit greyscale, not 8-bit
    arr, meta = read_image(path)
    assert arr.min() == 0 and arr.max() == 65535
    np.testing.assert_array_equal(arr, stored.astype(np.float32))
    assert meta.format == "png" and meta.extra["bit_depth"] == 16 and meta.stored_dtype == "uint16"


def test_png8_stays_8_bit(tmp_path: Path) -> None:
    stored = ramp(np.uint8, 0, 255)
    src = write_png(tmp_path / "x.png", stored)
    assert read_png(src).dtype == np.uint8
    arr, meta = read_image(src)
    assert meta.extra["bit_depth"] == 8
    out = write_image(tmp_path / "y.PNG", arr, meta)  # suffix case may differ
    assert read_png(out).dtype == np.uint8
    np.testing.assert_array_equal(read_png(out), stored)


def test_write_png_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ImageIOError, match="dtype float32"):
        write_png(tmp_path / "x.png", np.zeros((4, 5), np.float32))
    with pytest.raises(ImageIOError, match="2D"):
        write_png(tmp_path / "x.png", np.zeros((4, 5, 3), np.uint8))
    assert not (tmp_path / "x.png").exists()


def test_rgb_png_with_equal_channels_is_accepted(tmp_path: Path, caplog) -> None:
    grey = ramp(np.uint8, 0, 255)
    path = tmp_path / "rgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)
    with caplog.at_level(logging.WARNING, logger="medi2i.data.io"):
        arr, _ = read_image(path)
    np.testing.assert_array_equal(arr, grey)
    assert "first channel" in caplog.text


def test_rgb_png_with_different_channels_is_an_error(tmp_path: Path) -> None:
    grey = ramp(np.uint8, 0, 255)
    path = tmp_path / "colour.png"
    Image.fromarray(np.stack([grey, grey, 255 - grey], axis=-1)).save(path)
    with pytest.raises(ImageIOError, match=r"colour\.png.*single-channel greyscale.*RGB"):
        read_image(path)


def test_palette_png_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pal.png"
    Image.fromarray(ramp(np.uint8, 0, 255)).convert("P").save(path)
    with pytest.raises(ImageIOError, match=r"pal\.png.*palette"):
        read_image(path)


def test_corrupt_and_truncated_png(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ImageIOError, match=r"bad\.png.*(corrupt|truncated)"):
        read_image(bad)
    good = write_png(tmp_path / "good.png", ramp(np.uint16, 0, 65535))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageIOError, match=r"cut\.png.*(corrupt|truncated)"):
        read_image(cut)


def test_out_of_range_values_are_clipped_and_rounded(tmp_path: Path, caplog) -> None:
    src = write_png(tmp_path / "x.png", ramp(np.uint8, 0, 255))
    arr, meta = read_image(src)
    arr[0, 0], arr[0, 1], arr[0, 2], arr[0, 3] = 300.0, -5.0, 10.6, 10.4
    with caplog.at_level(logging.WARNING, logger="medi2i.data.io"):
        out = write_image(tmp_path / "y.png", arr, meta)
    assert "clipped" in caplog.text and "2 of 320" in caplog.text
    raw = read_png(out)
    assert raw[0, :4].tolist() == [255, 0, 11, 10]


def test_clipping_warns_only_about_material_overshoot(tmp_path: Path, caplog) -> None:
    """A prediction scattering a few grey levels around the range's end (black background)
    is clipped silently; values far outside the range are warned about with their count."""
    src = write_png(tmp_path / "x.png", ramp(np.uint16, 0, 65535))
    arr, meta = read_image(src)
    arr[:2] = -30.0  # two rows 0.05% of the range below 0: noise around black
    with caplog.at_level(logging.WARNING, logger="medi2i.data.io"):
        out = write_image(tmp_path / "quiet.png", arr, meta)
    assert caplog.text == ""
    assert (read_png(out)[:2] == 0).all()
    arr[1, :3] = 70000.0  # 7% above the range
    with caplog.at_level(logging.WARNING, logger="medi2i.data.io"):
        write_image(tmp_path / "loud.png", arr, meta)
    assert "3 of 320" in caplog.text and "up to 4465" in caplog.text
    caplog.clear()
    big, big_meta = read_image(
        write_png(tmp_path / "big.png", np.full((100, 100), 30000, np.uint16))
    )
    big[0, 0] = 70000.0  # one stray pixel in 10,000: not worth a warning
    with caplog.at_level(logging.WARNING, logger="medi2i.data.io"):
        write_image(tmp_path / "stray.png", big, big_meta)
    assert caplog.text == ""


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def test_dicom_rescale_gives_hu(tmp_path: Path) -> None:
    stored = np.zeros((ROWS, COLS), dtype=np.int16)
    stored[0, 0], stored[1, 1], stored[2, 2] = 0, 1024, 2024  # air, water, bone-ish
    arr, meta = read_image(make_dicom(tmp_path / "ct.dcm", stored))
    assert (arr[0, 0], arr[1, 1], arr[2, 2]) == (-1024.0, 0.0, 1000.0)
    assert meta.format == "dicom" and meta.stored_dtype == "int16"
    assert meta.extra["rescale"] == (1.0, -1024.0)


def test_dicom_slope_and_unsigned(tmp_path: Path) -> None:
    stored = ramp(np.uint16, 0, 4095)
    path = make_dicom(tmp_path / "u.dcm", stored, slope=0.5, intercept=-100.0, bits_stored=12)
    arr, meta = read_image(path)
    np.testing.assert_array_equal(arr, stored * 0.5 - 100.0)
    out = write_image(tmp_path / "u_out.dcm", arr, meta)
    np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, stored)


def test_dicom_write_metadata(tmp_path: Path) -> None:
    stored = ramp(np.int16, -1000, 2000)
    src = make_dicom(tmp_path / "ct.dcm", stored, bits_stored=12)
    arr, meta = read_image(src)
    out = write_image(tmp_path / "result.dcm", arr, meta)
    a, b = pydicom.dcmread(src), pydicom.dcmread(out)
    assert b.PixelData == a.PixelData
    assert b.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "PixelSpacing", "Modality"):
        assert b.get(keyword) == a.get(keyword), keyword
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        assert b.get(keyword) == a.get(keyword), keyword
    assert (b.Rows, b.Columns) == (ROWS, COLS)
    assert b.SOPInstanceUID != a.SOPInstanceUID and b.SeriesInstanceUID != a.SeriesInstanceUID
    assert UID(b.SOPInstanceUID).is_valid and UID(b.SeriesInstanceUID).is_valid
    assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
    assert b.file_meta.MediaStorageSOPClassUID == b.SOPClassUID == a.SOPClassUID
    assert list(b.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert b.SeriesDescription.startswith("chest") and b.SeriesDescription.endswith("medi2i")
    assert b.DerivationDescription
    assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert (b.WindowCenter, b.WindowWidth) == (a.WindowCenter, a.WindowWidth)
    # a second write makes yet another instance
    out2 = write_image(tmp_path / "result2.dcm", arr, meta)
    assert pydicom.dcmread(out2).SOPInstanceUID != b.SOPInstanceUID


def test_dicom_monochrome1_inverted_and_restored(tmp_path: Path) -> None:
    stored = ramp(np.uint16, 0, 4095)
    src = make_dicom(
        tmp_path / "cr.dcm",
        stored,
        photometric="MONOCHROME1",
        slope=None,
        intercept=None,
        bits_stored=12,
    )
    arr, meta = read_image(src)
    np.testing.assert_array_equal(arr, 4095.0 - stored)  # (s_min + s_max) - stored
    assert meta.extra["invert_sum"] == 4095.0
    out = write_image(tmp_path / "cr_out.dcm", arr, meta)
    b = pydicom.dcmread(out)
    assert b.PhotometricInterpretation == "MONOCHROME1"
    assert b.PixelData == pydicom.dcmread(src).PixelData
    # brighter result -> lower stored value in MONOCHROME1
    arr[0, 0] = arr[0, 0] - 5
    out2 = write_image(tmp_path / "cr_out2.dcm", arr, meta)
    assert pydicom.dcmread(out2).pixel_array[0, 0] == stored[0, 0] + 5


def test_dicom_monochrome1_with_rescale(tmp_path: Path) -> None:
    stored = ramp(np.uint16, 0, 1000)
    src = make_dicom(
        tmp_path / "m1.dcm",
        stored,
        photometric="MONOCHROME1",
        slope=2.0,
        intercept=10.0,
        bits_stored=10,
    )
    arr, meta = read_image(src)
    # y_min + y_max = (0*2+10) + (1023*2+10); value = that - (2*s + 10) = 2*(1023 - s) + 10
    np.testing.assert_array_equal(arr, 2.0 * (1023 - stored.astype(np.float64)) + 10.0)
    out = write_image(tmp_path / "m1_out.dcm", arr, meta)
    np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, stored)


def test_dicom_clips_to_bits_stored(tmp_path: Path, caplog) -> None:
    stored = ramp(np.int16, -2000, 2000)
    src = make_dicom(tmp_path / "ct.dcm", stored, bits_stored=12)
    arr, meta = read_image(src)
    assert meta.extra["stored_range"] == (-2048, 2047)
    arr[0, 0] = 5000.0  # stored 6024 > 2047
    arr[0, 1] = -4000.0  # stored -2976 < -2048
    with caplog.at_level(logging.WARNING, logger="medi2i.data.io"):
        out = write_image(tmp_path / "out.dcm", arr, meta)
    assert "clipped" in caplog.text
    px = pydicom.dcmread(out).pixel_array
    assert (px[0, 0], px[0, 1]) == (2047, -2048)


def test_dicom_implicit_vr_source_written_explicit(tmp_path: Path) -> None:
    stored = ramp(np.int16, -1000, 1000)
    src = make_dicom(tmp_path / "imp.dcm", stored, implicit=True)
    arr, meta = read_image(src)
    out = write_image(tmp_path / "exp.dcm", arr, meta)
    b = pydicom.dcmread(out)
    assert b.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(b.pixel_array, stored)


def test_dicom_without_suffix_detected_by_magic(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "IM0001", ramp(np.int16))
    uid_named = make_dicom(tmp_path / "1.2.826.0.1.3680043.504", ramp(np.int16))
    assert detect_format(path) == "dicom" and detect_format(uid_named) == "dicom"
    assert is_image_file(path) and is_image_file(uid_named)
    arr, _ = read_image(path)
    assert arr.shape == (ROWS, COLS)


def test_dicom_multiframe_needs_slice_index(tmp_path: Path) -> None:
    frames = np.stack([ramp(np.int16) + 10 * k for k in range(3)])
    path = make_dicom(tmp_path / "mf.dcm", frames)
    with pytest.raises(ImageIOError, match=r"mf\.dcm.*3 frames.*slice_index"):
        read_image(path)
    arr, meta = read_image(path, slice_index=2)
    np.testing.assert_array_equal(arr, frames[2] - 1024.0)
    with pytest.raises(ImageIOError, match="out of range"):
        read_image(path, slice_index=3)
    out = write_image(tmp_path / "frame2.dcm", arr, meta)
    b = pydicom.dcmread(out)
    assert int(b.NumberOfFrames) == 1
    np.testing.assert_array_equal(b.pixel_array, frames[2])


def test_dicom_rgb_and_missing_pixels_are_errors(tmp_path: Path) -> None:
    rgb = np.zeros((ROWS, COLS, 3), dtype=np.uint8)
    path = make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", samples=3)
    with pytest.raises(ImageIOError, match=r"rgb\.dcm.*one channel.*SamplesPerPixel 3"):
        read_image(path)
    path = make_dicom(tmp_path / "nopix.dcm", ramp(np.int16), with_pixels=False)
    with pytest.raises(ImageIOError, match=r"nopix\.dcm.*no pixel data"):
        read_image(path)


def test_dicom_truncated_pixel_data(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "t.dcm", ramp(np.int16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ImageIOError, match=r"t\.dcm"):
        read_image(path)


def test_dicom_apply_voi_window(tmp_path: Path) -> None:
    stored = np.full((ROWS, COLS), 1024, dtype=np.int16)  # 0 HU
    stored[0, 0], stored[0, 1] = 0, 2024  # -1024 HU (below window), 1000 HU (above)
    src = make_dicom(tmp_path / "ct.dcm", stored, bits_stored=12)
    arr, meta = read_image(src, apply_voi=True)
    y_min, y_max = -2048 - 1024, 2047 - 1024  # stored range through the rescale
    assert arr[0, 0] == y_min and arr[0, 1] == y_max
    assert y_min < arr[5, 5] < y_max  # 0 HU lies inside the window 40 +- 200
    assert meta.extra["voi_applied"] == "window"
    out = write_image(tmp_path / "voi.dcm", arr, meta)
    b = pydicom.dcmread(out)
    assert "WindowCenter" not in b and "WindowWidth" not in b
    again, _ = read_image(out)
    np.testing.assert_allclose(again, arr, atol=0.5)


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def test_nifti_2d_round_trip_keeps_affine_and_dtype(tmp_path: Path) -> None:
    data = ramp(np.int16, -500, 1500)
    src = make_nifti(tmp_path / "img.nii", data)
    arr, meta = read_image(src)
    np.testing.assert_array_equal(arr, data)
    out = write_image(tmp_path / "out.nii.gz", arr, meta)
    img = nib.load(out)
    assert img.shape == data.shape
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)


def test_nifti_3d_requires_slice_index(tmp_path: Path) -> None:
    vol = np.stack([ramp(np.int16) + 100 * k for k in range(4)], axis=-1)
    path = make_nifti(tmp_path / "vol.nii.gz", vol)
    with pytest.raises(ImageIOError, match=r"vol\.nii\.gz.*\(16, 20, 4\).*slice_index"):
        read_image(path)
    with pytest.raises(ImageIOError, match="out of range"):
        read_image(path, slice_index=4)


def test_nifti_slice_written_at_its_position(tmp_path: Path) -> None:
    vol = np.stack([ramp(np.int16) + 100 * k for k in range(4)], axis=-1)
    src = make_nifti(tmp_path / "vol.nii.gz", vol)
    arr, meta = read_image(src, slice_index=2)
    np.testing.assert_array_equal(arr, vol[:, :, 2])
    out = write_image(tmp_path / "slice.nii.gz", arr, meta)
    img = nib.load(out)
    assert img.shape == (ROWS, COLS, 1)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj)[:, :, 0], vol[:, :, 2])
    # voxel (i, j, 0) of the slice file is at the world position of voxel (i, j, 2)
    for ijk in ([0, 0], [3, 7], [ROWS - 1, COLS - 1]):
        world_vol = AFFINE @ np.array([*ijk, 2, 1.0])
        world_slice = img.affine @ np.array([*ijk, 0, 1.0])
        np.testing.assert_allclose(world_slice, world_vol, atol=1e-5)
    np.testing.assert_allclose(img.affine[:3, :3], AFFINE[:3, :3], atol=1e-6)


def test_nifti_singleton_axis_layout_kept(tmp_path: Path) -> None:
    data = ramp(np.uint16)[:, :, None]
    src = make_nifti(tmp_path / "one.nii", data)
    arr, meta = read_image(src)
    assert arr.shape == (ROWS, COLS)
    out = write_image(tmp_path / "one_out.nii", arr, meta)
    img = nib.load(out)
    assert img.shape == (ROWS, COLS, 1)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)


def test_nifti_scaled_written_as_float(tmp_path: Path) -> None:
    data = ramp(np.int16, 0, 1000)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, -20.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, path)
    arr, meta = read_image(path)
    np.testing.assert_allclose(arr, data * 0.5 - 20.0)
    assert meta.extra["scaled"]
    out = write_image(tmp_path / "scaled_out.nii", arr, meta)
    out_img = nib.load(out)
    assert out_img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out_img.get_fdata(dtype=np.float32), arr)


def test_nifti_4d_and_nan_are_errors(tmp_path: Path) -> None:
    path = make_nifti(tmp_path / "four.nii", np.zeros((ROWS, COLS, 2, 3), np.float32))
    with pytest.raises(ImageIOError, match=r"four\.nii.*4D"):
        read_image(path)
    data = ramp(np.float32)
    data[1, 1] = data[2, 2] = np.nan
    path = make_nifti(tmp_path / "nan.nii", data)
    with pytest.raises(ImageIOError, match=r"nan\.nii.*2 NaN"):
        read_image(path)


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_tiff_dtypes_round_trip(tmp_path: Path, dtype) -> None:
    data = ramp(dtype, -100 if np.dtype(dtype).kind != "u" else 0, 200)
    if np.dtype(dtype).kind == "f":
        data = data + np.float32(0.25)
    src = tmp_path / "x.tiff"
    tifffile.imwrite(src, data)
    arr, meta = read_image(src)
    assert meta.stored_dtype == np.dtype(dtype).name
    out = write_image(tmp_path / "y.tiff", arr, meta)
    back = tifffile.imread(out)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, data)


def test_tiff_keeps_resolution_and_description(tmp_path: Path) -> None:
    src = tmp_path / "res.tif"
    tifffile.imwrite(
        src,
        ramp(np.uint16),
        resolution=(10.0, 20.0),
        resolutionunit=3,
        description="chest pa",
        metadata=None,
    )
    arr, meta = read_image(src)
    out = write_image(tmp_path / "res_out.tif", arr, meta)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.description == "chest pa"
        x = page.tags["XResolution"].value
        y = page.tags["YResolution"].value
        assert x[0] / x[1] == pytest.approx(10.0) and y[0] / y[1] == pytest.approx(20.0)
        assert int(page.tags["ResolutionUnit"].value) == 3


def test_tiff_multipage_and_rgb(tmp_path: Path) -> None:
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(3):
            tw.write(ramp(np.uint16) + k)
    with pytest.raises(ImageIOError, match=r"pages\.tif.*3 pages.*slice_index"):
        read_image(path)
    arr, meta = read_image(path, slice_index=1)
    np.testing.assert_array_equal(arr, ramp(np.uint16) + 1)
    assert meta.extra["page_index"] == 1
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((ROWS, COLS, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageIOError, match=r"rgb\.tif.*single-channel"):
        read_image(rgb)


# --------------------------------------------------------------------------------------------
# NPY
# --------------------------------------------------------------------------------------------


def test_npy_singleton_layout_and_dtype_kept(tmp_path: Path) -> None:
    data = ramp(np.float32)[None] + np.float32(0.5)
    src = tmp_path / "x.npy"
    np.save(src, data)
    arr, meta = read_image(src)
    assert arr.shape == (ROWS, COLS)
    out = write_image(tmp_path / "y.npy", arr, meta)
    back = np.load(out)
    assert back.shape == (1, ROWS, COLS) and back.dtype == np.float32
    np.testing.assert_array_equal(back, data)


def test_npy_bool_is_float(tmp_path: Path) -> None:
    mask = ramp(np.uint16) > 2000
    src = tmp_path / "mask.npy"
    np.save(src, mask)
    arr, meta = read_image(src)
    np.testing.assert_array_equal(arr, mask.astype(np.float32))
    back = np.load(write_image(tmp_path / "mask_out.npy", arr, meta))
    assert back.dtype == np.bool_
    np.testing.assert_array_equal(back, mask)


def test_npy_errors(tmp_path: Path) -> None:
    multi = tmp_path / "multi.npy"
    np.save(multi, np.zeros((ROWS, COLS, 3), np.float32))
    with pytest.raises(ImageIOError, match=r"multi\.npy.*single-channel.*\(16, 20, 3\)"):
        read_image(multi)
    nan = tmp_path / "nan.npy"
    data = ramp(np.float32)
    data[0, :3] = np.nan
    np.save(nan, data)
    with pytest.raises(ImageIOError, match=r"nan\.npy.*3 NaN"):
        read_image(nan)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(ImageIOError, match=r"obj\.npy"):
        read_image(obj)
    empty = tmp_path / "zero.npy"
    np.save(empty, np.zeros((0, 5), np.float32))
    with pytest.raises(ImageIOError, match=r"zero\.npy.*no pixels"):
        read_image(empty)


# --------------------------------------------------------------------------------------------
# Generic errors and helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_empty_file_is_an_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ImageIOError, match=re.escape(path.name) + ".*empty") as info:
        read_image(path)
    assert info.value.path == path


def test_missing_file_and_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(ImageIOError, match=r"nope\.png.*not found"):
        read_image(tmp_path / "nope.png")
    jpg = tmp_path / "photo.jpg"
    jpg.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(ImageIOError, match=r"photo\.jpg.*unsupported"):
        read_image(jpg)
    with pytest.raises(ImageIOError, match="unsupported"):
        detect_format(tmp_path / "notes.txt")


def test_detect_format_and_is_image_file(tmp_path: Path) -> None:
    expected = {
        "a.dcm": "dicom",
        "a.DICOM": "dicom",
        "a.nii": "nifti",
        "a.NII.GZ": "nifti",
        "a.png": "png",
        "a.tif": "tiff",
        "a.TIFF": "tiff",
        "a.npy": "npy",
    }
    for name, fmt in expected.items():
        assert detect_format(tmp_path / name) == fmt
        assert is_image_file(tmp_path / name)
    assert not is_image_file(tmp_path / "a.txt")
    assert not is_image_file(tmp_path / ".a.tmp.png")  # atomic_path temporaries
    (tmp_path / "README").write_text("hello")
    assert not is_image_file(tmp_path / "README")


def test_slice_index_on_single_image_is_an_error(tmp_path: Path) -> None:
    src = write_png(tmp_path / "x.png", ramp(np.uint8, 0, 255))
    read_image(src, slice_index=0)
    with pytest.raises(ImageIOError, match=r"x\.png.*slice_index=1"):
        read_image(src, slice_index=1)
    with pytest.raises(ImageIOError, match=">= 0"):
        read_image(src, slice_index=-1)


def test_write_rejects_nan_and_wrong_rank(tmp_path: Path) -> None:
    src = write_png(tmp_path / "x.png", ramp(np.uint8, 0, 255))
    arr, meta = read_image(src)
    arr[4, 4] = np.nan
    with pytest.raises(ImageIOError, match=r"y\.png.*NaN"):
        write_image(tmp_path / "y.png", arr, meta)
    with pytest.raises(ImageIOError, match="2D"):
        write_image(tmp_path / "y.png", np.zeros((2, ROWS, COLS)), meta)
    assert not (tmp_path / "y.png").exists()


def test_error_is_value_error_with_path(tmp_path: Path) -> None:
    err = ImageIOError(tmp_path / "f.png", "broken")
    assert isinstance(err, ValueError)
    assert str(err) == f"{tmp_path / 'f.png'}: broken"
    again = pickle.loads(pickle.dumps(err))
    assert again.path == err.path and str(again) == str(err)
    assert isinstance(ImageMeta(tmp_path, "png", (1, 1), "uint8").extra, dict)


def test_dicom_compressed_source_written_uncompressed(tmp_path: Path) -> None:
    from pydicom.uid import RLELossless

    stored = ramp(np.int16, -1000, 2000)
    src = make_dicom(tmp_path / "plain.dcm", stored)
    ds = pydicom.dcmread(src)
    ds.compress(RLELossless)  # pydicom's own RLE encoder, no codec needed
    rle = tmp_path / "rle.dcm"
    ds.save_as(rle, enforce_file_format=True)
    assert pydicom.dcmread(rle).file_meta.TransferSyntaxUID == RLELossless
    arr, meta = read_image(rle)
    np.testing.assert_array_equal(arr, stored - 1024.0)
    out = write_image(tmp_path / "out.dcm", arr, meta)
    b = pydicom.dcmread(out)
    assert b.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(b.pixel_array, stored)


def test_dicom_modality_lut_sequence_round_trip(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    stored = (ramp(np.uint16, 0, 255)).astype(np.uint16)
    path = make_dicom(tmp_path / "lut.dcm", stored, slope=None, intercept=None, bits_stored=8)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "US"
    lut = np.arange(256, dtype="<u2") * 3 + 7  # monotonic, non-trivial
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUTData
    ds.ModalityLUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    arr, meta = read_image(path)
    np.testing.assert_array_equal(arr, 3.0 * stored + 7.0)
    out = write_image(tmp_path / "lut_out.dcm", arr + 1.0, meta)  # nearest LUT entry wins
    np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, stored)


def test_dicom_monochrome1_voi_is_brighter_for_denser(tmp_path: Path) -> None:
    stored = np.full((ROWS, COLS), 500, dtype=np.uint16)
    stored[0, 0], stored[0, 1] = 100, 900  # MONOCHROME1: 900 is darker than 100
    src = make_dicom(
        tmp_path / "m1.dcm",
        stored,
        photometric="MONOCHROME1",
        slope=None,
        intercept=None,
        bits_stored=10,
    )
    ds = pydicom.dcmread(src)
    ds.WindowCenter, ds.WindowWidth = 500, 1000
    ds.save_as(src, enforce_file_format=True)
    arr, meta = read_image(src, apply_voi=True)
    assert arr[0, 0] > arr[5, 5] > arr[0, 1]
    assert arr.min() >= 0.0 and arr.max() <= 1023.0
    out = write_image(tmp_path / "m1_voi.dcm", arr, meta)
    again, _ = read_image(out)
    np.testing.assert_allclose(again, arr, atol=0.5)


def test_tiff_float_nan_is_an_error(tmp_path: Path) -> None:
    data = ramp(np.float32)
    data[4, 4] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(ImageIOError, match=r"nan\.tif.*1 NaN"):
        read_image(path)
