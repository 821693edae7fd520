"""baps-fed: federated black-box adaptation of segmentation foundation models (BAPS on Flower)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("baps-fed")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
