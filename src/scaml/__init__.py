"""scaml: single-cell batch integration, reference mapping and cross-batch classifier benchmarks."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scaml")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from .errors import ScamlError  # noqa: E402

__all__ = ["ScamlError", "__version__", "run_harmony", "harmony_integrate"]


def __getattr__(name: str):
    # Lazy imports keep `import scaml` and `scaml --help` fast.
    if name == "run_harmony":
        from .harmony import run_harmony

        return run_harmony
    if name == "harmony_integrate":
        from .harmony import harmony_integrate

        return harmony_integrate
    raise AttributeError(f"module 'scaml' has no attribute {name!r}")
