"""The installed medi2i version, for the files and reports that record which code wrote them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medi2i")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
