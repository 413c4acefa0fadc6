"""medi2i: registration-aware GANs for paired medical image-to-image translation.

The package's face: ``medi2i.__version__`` and ``medi2i.Predictor`` (the prediction API). Code
inside the package imports the version from :mod:`medi2i.utils.version`, never from here, so
this module sits above everything it hands out.
"""

from medi2i.utils.version import __version__

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import medi2i` (and every CLI start) stays light; torch loads on first use.
    if name == "Predictor":
        from medi2i.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'medi2i' has no attribute {name!r}")
