"""The training inputs' intensity profile: measured at training, stored, checked at predict."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from medi2i.config import Config, NormalizationConfig
from medi2i.data.intensity import IntensityProfile, measure_intensity
from medi2i.data.io import read_image, write_png
from medi2i.data.normalization import Normalizer, Window
from medi2i.inference import LoadedGenerator, Predictor, load_generator, predict_paths
from medi2i.inference.predictor import IntensityMismatchError
from medi2i.run.checkpoint import load_checkpoint
from test_inference import Identity
from tinydata import synthetic_pair, train_tiny_g_only, write_pairs

FULL16 = Window(0.0, 65535.0)


def radiographs(count: int = 6, seed: int = 0) -> list[np.ndarray]:
    """16-bit chest-like inputs (soft tissue + bone stripes), 64 px."""
    rng = np.random.default_rng(seed)
    return [synthetic_pair(rng, 64)[0] for _ in range(count)]


def profile16(images: list[np.ndarray]) -> IntensityProfile:
    return IntensityProfile.from_images((im, FULL16, "uint16") for im in images)


def to8(image16: np.ndarray) -> np.ndarray:
    return np.round(image16 / 257.0).astype(np.uint8)


def test_measure_is_in_window_units_and_counts_clipping():
    image = np.linspace(-100.0, 1100.0, 1201)
    stats = measure_intensity(image, Window(0.0, 1000.0))
    assert stats.median == pytest.approx(0.5, abs=1e-9)
    assert stats.low == pytest.approx(-0.088, abs=1e-3)  # 1st percentile of -0.1..1.1
    assert stats.high == pytest.approx(1.088, abs=1e-3)
    assert stats.outside == pytest.approx(200 / 1201, abs=1e-9)  # -100..-1 and 1001..1100


def test_same_kind_of_image_matches_other_encodings_do_not():
    images = radiographs()
    profile = profile16(images)
    fresh = radiographs(3, seed=1)
    for image in fresh:
        assert profile.mismatch(measure_intensity(image, FULL16)) == []
    # another exposure: 20% darker, still the same kind of image
    darker = np.round(fresh[0] * 0.8).astype(np.uint16)
    assert profile.mismatch(measure_intensity(darker, FULL16)) == []
    # the same image as 8-bit or as floats in [0, 1], read through the 16-bit window
    as8 = profile.mismatch(measure_intensity(to8(fresh[0]), FULL16))
    as_float = profile.mismatch(measure_intensity(fresh[0] / 65535.0, FULL16))
    for problems in (as8, as_float):
        assert any("median" in p for p in problems)
        assert any("percentile range" in p for p in problems)
    # a 16-bit image through an 8-bit window: almost every pixel clipped
    clipped = profile.mismatch(measure_intensity(fresh[0], Window(0.0, 255.0)))
    assert any("outside the window" in p for p in clipped)


def test_suggested_window_puts_the_image_back_where_training_inputs_sat():
    images = radiographs()
    profile = profile16(images)
    image = radiographs(1, seed=2)[0]
    # an integer type other than the training files': its own full range
    assert profile.suggest_window(to8(image), "uint8") == Window(0.0, 255.0)
    # floats: the window mapping its percentiles onto the training inputs'
    window = profile.suggest_window(image / 65535.0, "float32")
    assert window is not None
    assert profile.mismatch(measure_intensity(image / 65535.0, window)) == []
    # the suggestion for an exact rescaling recovers (about) the same relative window
    assert window.lo == pytest.approx(0.0, abs=0.05)
    assert window.hi == pytest.approx(1.0, abs=0.1)


def test_profile_round_trips_and_names_a_malformed_field():
    profile = profile16(radiographs())
    assert IntensityProfile.from_dict(profile.to_dict()) == profile
    broken = profile.to_dict()
    del broken["spread"]
    with pytest.raises(ValueError, match=r"malformed intensity profile.*spread"):
        IntensityProfile.from_dict(broken)
    with pytest.raises(ValueError, match="at least one"):
        IntensityProfile.from_images([])


def fixed_window_identity(profile: IntensityProfile | None) -> LoadedGenerator:
    return LoadedGenerator(
        generator=Identity(),
        config=Config(),
        normalizer=Normalizer(NormalizationConfig(mode="fixed", window=(0.0, 65535.0))),
        checkpoint=Path("identity.pt"),
        weights="ema",
        epoch=None,
        intensity=profile,
    )


def test_predictor_refuses_an_8bit_image_and_accepts_it_with_its_window(caplog):
    profile = profile16(radiographs())
    image = radiographs(1, seed=3)[0]
    predictor = Predictor(fixed_window_identity(profile))
    np.testing.assert_allclose(predictor(image), image, atol=0.02)  # a matching image passes
    with pytest.raises(IntensityMismatchError) as err:
        predictor(to8(image), source="chest8.png")
    message = str(err.value)
    assert message.startswith("chest8.png: ")
    assert "[0, 65535]" in message and "uint8" in message and "uint16" in message
    assert "--input-window 0 255" in message
    # the window the message suggests: the output is in the input's 8-bit units
    windowed = Predictor(fixed_window_identity(profile), input_window=(0, 255))
    out = windowed(to8(image))
    np.testing.assert_allclose(out, to8(image), atol=1e-3)
    # warn: predicted, with the reason logged
    with caplog.at_level(logging.WARNING):
        Predictor(fixed_window_identity(profile), intensity_check="warn")(to8(image))
    assert "do not look like the training inputs" in caplog.text
    # off, or a checkpoint without a profile: not checked
    Predictor(fixed_window_identity(profile), intensity_check="off")(to8(image))
    Predictor(fixed_window_identity(None))(to8(image))
    with pytest.raises(ValueError, match="intensity_check must be one of"):
        Predictor(fixed_window_identity(profile), intensity_check="strict")
    with pytest.raises(ValueError, match="input_window"):
        Predictor(fixed_window_identity(profile), input_window=(10, 10))


def test_predict_paths_lists_a_mismatched_file_as_failed_with_the_reason(tmp_path):
    profile = profile16(radiographs())
    image = radiographs(1, seed=4)[0]
    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "good.png", image)
    write_png(src / "eight.png", to8(image))
    np.save(src / "unit.npy", (image / 65535.0).astype(np.float32))
    summary = predict_paths(
        Predictor(fixed_window_identity(profile)), [src], tmp_path / "out", progress=False
    )
    assert [p.name for p in summary.ok] == ["good.png"]
    reasons = {p.name: r for p, r in summary.failed}
    assert set(reasons) == {"eight.png", "unit.npy"}
    assert "--input-window 0 255" in reasons["eight.png"]
    assert "float32" in reasons["unit.npy"]
    assert summary.exit_code == 1
    assert not (tmp_path / "out" / "eight.png").exists()


def test_training_stores_the_profile_and_predict_loads_it(tmp_path):
    root = write_pairs(tmp_path / "pairs", {"train": 4, "val": 2}, np.random.default_rng(0))
    run = train_tiny_g_only(root, tmp_path / "run")
    state = load_checkpoint(run / "checkpoints" / "last.pt", map_location="cpu")
    stored = IntensityProfile.from_dict(state["intensity_profile"])
    assert stored.images == 4 and stored.stored_dtypes == ("uint16",)
    assert stored.window == (0.0, 65535.0)  # the tiny runs normalise by the 16-bit range
    image, _ = read_image(root / "train" / "input" / "000.png")
    expected = measure_intensity(image, FULL16)
    assert stored.median[0] <= expected.median <= stored.median[1]
    assert load_generator(run).intensity == stored
