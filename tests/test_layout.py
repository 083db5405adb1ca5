"""The package's layers: imports only run downwards (no module imports a layer above its own)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "scaml"

#: Layers, bottom first: a module may import its own layer and those below it, never those above.
LAYERS = [
    {"errors", "_utils", "io", "manifest", "style", "runinfo", "datasets"},
    {"neighbors", "umap_sample", "preprocess", "hvg", "markers", "plotting", "report", "report_verdicts"},
    {"harmony", "vae", "metrics", "atac", "cite", "tcr", "chunked"},
    {"mapping", "classify", "pipeline"},
    {"demo"},
    {"cli", "__main__"},
]


def _layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _scaml_imports(path: Path) -> set[str]:
    """Top-level scaml sub-packages or modules that ``path`` imports (anywhere in the file)."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                if not node.module:
                    parts = parts + [alias.name for alias in node.names][:1]
            else:
                parts = (node.module or "").split(".")
            if parts and parts[0] == "scaml" and len(parts) > 1:
                names.add(parts[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "scaml" and len(parts) > 1:
                    names.add(parts[1])
    return names


def test_every_module_is_in_a_layer():
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.glob("*") if p.suffix == ".py" or p.is_dir()}
    tops -= {"__init__", "__pycache__", "py.typed", "templates"}
    unplaced = sorted(t for t in tops if not any(t in names for names in LAYERS))
    assert not unplaced, f"place these modules in a layer: {unplaced}"


def test_imports_run_downwards_only():
    upward = []
    for path in SRC.rglob("*.py"):
        own = path.relative_to(SRC).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for target in _scaml_imports(path) - {own, "__init__"}:
            if target in {"__version__"}:
                continue
            if _layer(target) > _layer(own):
                upward.append(f"{path.relative_to(SRC)} imports scaml.{target}")
    assert not upward, upward
