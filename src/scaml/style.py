"""The one place that decides how scaml's figures look.

No scaml module changes matplotlib's global settings: every function that draws a figure runs
inside :func:`figure_style` (or is decorated with :func:`styled`), which applies scaml's style
for that figure only, so a notebook's own matplotlib settings are left as they were. The
``scaml`` command, which only writes files, selects the non-interactive Agg backend once at
start-up (:func:`use_file_backend`); the library leaves the backend to matplotlib.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

#: scaml's figure style: legible text, no top/right spines.
STYLE: dict[str, Any] = {
    "font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 9,
    "figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False,
}

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Apply :data:`STYLE` to the figures created inside the block, and restore the settings after."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def styled(func: F) -> F:
    """Decorator: run a plotting function inside :func:`figure_style`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with figure_style():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def use_file_backend() -> None:
    """Select matplotlib's non-interactive Agg backend (for the command line, which writes files only)."""
    import matplotlib

    matplotlib.use("Agg")
