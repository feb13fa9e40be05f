"""The package's version, in a module of its own so that every layer can name it without importing the package."""
from __future__ import annotations

import platform
from importlib import metadata

__version__ = "0.1.0"

REPORTED_PACKAGES = ("torch", "transformers", "lightning", "torchmetrics", "safetensors")


def package_versions() -> dict[str, str]:
    """The versions reports and checkpoints record, read from the installed distributions' metadata: importing
    Lightning only to read its version would cost an edit run seconds of start-up."""
    out = {"lightning_edit": __version__}
    for name in REPORTED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out
