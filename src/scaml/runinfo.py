"""What a run did, written as ``run.json`` beside its outputs (the report reads it)."""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _utils
from ._utils import Timer, package_versions
from .io import write_json

RUN_FILE = "run.json"

#: The command line of the current run (set by the ``scaml`` command; empty from Python).
_COMMAND_LINE: list[str] = []


def set_command_line(argv: list[str]) -> None:
    """Remember the command line of the current run, for run.json and the report."""
    _COMMAND_LINE[:] = [str(a) for a in argv]


def command_string() -> str:
    """The current command line as one shell-quoted string ("" when run from Python)."""
    import shlex

    return " ".join(shlex.quote(a) for a in _COMMAND_LINE)


@dataclass
class RunRecord:
    """Parameters, inputs, timings, warnings and versions of one scaml run.

    Create it at the start of a command, fill ``parameters``, ``inputs``,
    ``data`` (e.g. cell and gene counts before and after QC) and use
    ``timer`` for steps; ``save(outdir)`` writes ``outdir/run.json``.

    Parameters
    ----------
    command
        The scaml subcommand or library function, e.g. ``"integrate"``.
    parameters
        The parameters the run used (JSON-serialisable).
    """

    command: str
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    timer: Timer = field(default_factory=Timer)
    started: float = field(default_factory=time.time)
    _warnings_start: int = field(default_factory=lambda: len(_utils.WARNINGS))

    @property
    def warnings(self) -> list[str]:
        """Warnings emitted with :func:`scaml._utils.warn` since this record was created."""
        return list(_utils.WARNINGS[self._warnings_start:])

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        return {
            "command": self.command,
            "command_line": command_string(),
            "started": _dt.datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - self.started, 3),
            "inputs": {k: os.path.basename(str(v)) for k, v in self.inputs.items()},
            "parameters": self.parameters,
            "data": self.data,
            "timings_seconds": self.timer.seconds,
            "warnings": self.warnings,
            "versions": package_versions(),
        }

    def save(self, outdir: str | os.PathLike) -> Path:
        """Write ``outdir/run.json`` atomically and return its path."""
        return write_json(self.to_dict(), Path(outdir) / RUN_FILE)


def load_run(outdir: str | os.PathLike) -> dict[str, Any] | None:
    """Read ``outdir/run.json`` if it exists."""
    import json

    path = Path(outdir) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None
