"""Small shared helpers: logging and progress, timings, versions, seeds."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
_QUIET = False

#: Packages whose versions are written next to every result.
TRACKED_PACKAGES = (
    "scaml", "numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn",
    "torch", "xgboost", "umap-learn", "pynndescent", "leidenalg", "igraph", "matplotlib",
)


def set_quiet(quiet: bool) -> None:
    """Silence (``True``) or restore (``False``) progress and info messages."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    """Whether progress and info messages are silenced."""
    return _QUIET


def info(message: str) -> None:
    """Print an informational message to stderr unless quiet."""
    if not _QUIET:
        console.print(message, soft_wrap=True)


def warn(message: str) -> None:
    """Print a warning to stderr (even when quiet) and record it for the report."""
    WARNINGS.append(message)
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


#: Warnings raised during the current run, in order; the report shows them.
WARNINGS: list[str] = []


def progress(transient: bool = True) -> Progress:
    """A rich progress bar writing to stderr, disabled when quiet."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=_QUIET,
    )


class Timer:
    """Collect wall-clock timings of named steps.

    Examples
    --------
    >>> timer = Timer()
    >>> with timer("pca"):
    ...     pass
    >>> "pca" in timer.seconds
    True
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python and the packages scaml's results depend on."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in TRACKED_PACKAGES + tuple(extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to plain JSON-serialisable values."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN -> null
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value
