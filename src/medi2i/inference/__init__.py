"""Prediction with a trained generator: loading, the Predictor API, TTA, tiling, file
prediction and export.

* :func:`load_generator` - G (EMA or online weights) with its config and normaliser;
* :class:`Predictor` - ``Predictor.from_run(run)(image)``: any size, TTA, tiling;
* :func:`predict_paths` - files and folders, outputs written like their inputs;
* :func:`export_generator` - TorchScript / ONNX, checked against eager G.
"""

from medi2i.inference.export import ExportError, export_generator
from medi2i.inference.loading import LoadedGenerator, load_generator, resolve_checkpoint
from medi2i.inference.predict import PredictSummary, predict_paths
from medi2i.inference.predictor import Predictor
from medi2i.inference.tta import DEFAULT_TTA, TTA_NAMES, parse_tta

__all__ = [
    "DEFAULT_TTA",
    "TTA_NAMES",
    "ExportError",
    "LoadedGenerator",
    "PredictSummary",
    "Predictor",
    "export_generator",
    "load_generator",
    "parse_tta",
    "predict_paths",
    "resolve_checkpoint",
]
