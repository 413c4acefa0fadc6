"""medi2i: registration-aware GANs for paired medical image-to-image translation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medi2i")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
