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


def add_up(*parts: Any) -> Any:
    """The sum of partial results, added left to right: arrays, numbers, None, or tuples of them
    (element by element). The first part is not modified."""
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(add_up(*(p[i] for p in parts)) for i in range(len(first)))
    if first is None:
        return None
    total = first.copy() if hasattr(first, "copy") and not isinstance(first, (int, float)) else first
    for p in parts[1:]:
        total = total + p
    return total


class SumTree:
    """Partial results added in a fixed tree: groups of ``fan_in`` consecutive results, level by level.

    ``push`` the results in order and ``total()`` gives the sum. ``combine(group)`` adds one group
    (default :func:`add_up`); with one that submits a Dask task the sums are made on the workers,
    and the order of the additions, hence the floating-point result, is the same as in one process.
    At most ``fan_in - 1`` results per level wait for their group.
    """

    def __init__(self, fan_in: int = 8, combine: Any = None) -> None:
        self.fan_in = int(fan_in)
        self.combine = combine or (lambda group: add_up(*group))
        self.levels: list[list[Any]] = []
        self.n = 0

    def push(self, value: Any) -> None:
        self.n += 1
        self._add(value, 0)

    def _add(self, value: Any, k: int) -> None:
        if k == len(self.levels):
            self.levels.append([])
        self.levels[k].append(value)
        if len(self.levels[k]) == self.fan_in:
            group, self.levels[k] = self.levels[k], []
            self._add(self.combine(group), k + 1)

    def total(self) -> Any:
        """The sum of everything pushed (the last, shorter group of each level is added last)."""
        if self.n == 0:
            raise ValueError("nothing to add up")
        sizes = [self.n]
        while sizes[-1] > 1:
            sizes.append(-(-sizes[-1] // self.fan_in))
        top = len(sizes) - 1
        for k in range(top):
            if k < len(self.levels) and self.levels[k]:
                group, self.levels[k] = self.levels[k], []
                self._add(group[0] if len(group) == 1 else self.combine(group), k + 1)
        return self.levels[top][0]
