"""medi2i: registration-aware GANs for paired medical image-to-image translation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medi2i")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import medi2i` (and every CLI start) stays light; torch loads on first use.
    if name == "Predictor":
        from medi2i.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'medi2i' has no attribute {name!r}")
