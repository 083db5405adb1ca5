"""The mapping package's structure and contracts: HVG rule, CLI spellings, method options, formats."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from scaml.cli import main
from scaml.datasets import simulate
from scaml.errors import ScamlError
from scaml.manifest import manifest_header, read_manifest
from scaml.mapping import METHODS, build_reference, map_query

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SRC = Path(__file__).resolve().parents[1] / "src" / "scaml"


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    """A 2,000-gene panel: reference (batch1, batch2) and query (batch3) files."""
    adata = simulate(n_cells=450, n_genes=2000, n_batches=3, n_cell_types=3, n_markers=20,
                     marker_log_fold=2.5, low_quality_fraction=0.0, random_state=4)
    root = tmp_path_factory.mktemp("panel")
    ref = adata[adata.obs["batch"] != "batch3"].copy()
    query = adata[adata.obs["batch"] == "batch3"].copy()
    ref.write_h5ad(root / "ref.h5ad")
    query.write_h5ad(root / "query.h5ad")
    return {"root": root, "ref": root / "ref.h5ad", "query": root / "query.h5ad", "n_genes": adata.n_vars}


def _run(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


@pytest.mark.parametrize("method, extra", [
    ("symphony", ["--n-comps", "10"]),
    ("scvi", ["--max-epochs", "2", "--threads", "1", "--hidden-layers", "16"]),
])
def test_n_hvg_above_the_panel_uses_every_gene_with_one_warning(panel, tmp_path, method, extra):
    out = tmp_path / "ref"
    status = main(["reference", "build", str(panel["ref"]), "--method", method, "--batch-key", "batch",
                   "--label-key", "cell_type", "--n-hvg", "3000", "--out", str(out), "--quiet", *extra])
    assert status == 0
    manifest = json.loads((out / "reference.json").read_text())
    assert manifest["n_genes"] == panel["n_genes"] == 2000
    hvg_warnings = [w for w in _run(out)["warnings"] if "highly variable genes" in w]
    assert len(hvg_warnings) == 1
    assert "3000" in hvg_warnings[0] and "2000" in hvg_warnings[0]
    assert (out / "report.html").exists()


def test_cli_input_and_output_spellings(panel, tmp_path, capsys):
    ref = tmp_path / "ref"
    assert main(["reference", "build", "--adata", str(panel["ref"]), "--method", "symphony", "--batch-key",
                 "batch", "--label-key", "cell_type", "--n-hvg", "500", "--n-comps", "10", "--outdir", str(ref),
                 "--quiet"]) == 0
    assert (ref / "reference.json").exists()
    calls = {
        "query": ["--query", str(panel["query"]), "--out"],
        "positional": [str(panel["query"]), "--outdir"],
        "adata": ["--adata", str(panel["query"]), "--outdir"],
    }
    for name, args in calls.items():
        out = tmp_path / name
        assert main(["map", "--reference", str(ref), *args, str(out), "--no-umap", "--quiet"]) == 0, name
        assert (out / "mapped.h5ad").exists() and (out / "report.html").exists()
    assert main(["map", "--reference", str(ref), str(panel["query"]), "--query", str(panel["ref"]),
                 "--out", str(tmp_path / "two"), "--quiet"]) == 2
    assert "two inputs" in capsys.readouterr().err
    assert main(["map", "--reference", str(ref), "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert "no input" in capsys.readouterr().err


def test_the_method_decides_which_options_apply(panel, tmp_path):
    import anndata as ad

    ref_cells = ad.read_h5ad(panel["ref"])
    out = build_reference(ref_cells, "symphony", "batch", "cell_type", tmp_path / "ref", n_hvg=300,
                          n_comps=10, n_latent=5, train_params={"n_threads": 1})
    warnings = _run(out)["warnings"]
    assert any("not used by method 'symphony'" in w and "n_latent=5" in w and "n_threads=1" in w
               for w in warnings), warnings
    assert _run(out)["parameters"]["options"] == {"n_comps": 10}
    assert (out / "report.html").exists()  # written by the library, not only by the CLI
    with pytest.raises(ScamlError, match="unknown option.*n_laten"):
        build_reference(ref_cells, "scvi", "batch", out=tmp_path / "bad", n_laten=5)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    query = ad.read_h5ad(panel["query"])
    mapped = map_query(out, query, tmp_path / "map", max_epochs=3, umap=False)
    assert "mapping_confidence" in mapped.obs
    assert any("max_epochs=3" in w for w in _run(tmp_path / "map")["warnings"])


def test_training_options_reach_the_model_whichever_way_they_are_given(panel, tmp_path):
    import anndata as ad

    ref_cells, query = ad.read_h5ad(panel["ref"]), ad.read_h5ad(panel["query"])
    out = build_reference(ref_cells, "scvi", "batch", "cell_type", tmp_path / "ref", n_hvg=200,
                          hidden_layers=(16,), train_params={"max_epochs": 2, "n_threads": 1, "verbose": False})
    assert _run(out)["data"]["training"]["epochs"] == 2
    map_query(out, query, tmp_path / "map", train_params={"max_epochs": 1, "n_threads": 1}, umap=False)
    assert _run(tmp_path / "map")["data"]["query_training"]["epochs"] == 1
    map_query(out, query, tmp_path / "map2", max_epochs=2, train_params={"n_threads": 1}, umap=False)
    assert _run(tmp_path / "map2")["data"]["query_training"]["epochs"] == 2


def test_registry_and_capabilities():
    assert list(METHODS) == ["scvi", "trvae", "scanvi", "peakvi", "poissonvi", "totalvi", "mvtcr", "symphony"]
    assert {m.name for m in METHODS.values()} == set(METHODS)
    assert METHODS["scvi"].accepts("n_latent") and not METHODS["symphony"].accepts("n_latent")
    assert METHODS["trvae"].accepts("beta") and not METHODS["scvi"].accepts("beta")
    assert METHODS["symphony"].accepts("theta") and not METHODS["symphony"].accepts("max_epochs", "map")
    assert METHODS["scanvi"].accepts("max_epochs", "map")


def test_read_manifest_checks_kind_and_version(tmp_path):
    path = tmp_path / "thing.json"
    path.write_text(json.dumps({**manifest_header("scaml-thing", 2), "x": 1}))
    assert read_manifest(path, kind="scaml-thing", format_version=2, what="thing")["x"] == 1
    with pytest.raises(ScamlError, match="format version 2 .*reads format version 3"):
        read_manifest(path, kind="scaml-thing", format_version=3, what="thing")
    with pytest.raises(ScamlError, match="not a thing"):
        read_manifest(path, kind="scaml-other", format_version=2, what="thing")
    path.write_text("{broken")
    with pytest.raises(ScamlError, match="not valid JSON.*corrupt"):
        read_manifest(path, kind=None, format_version=2, what="thing")
    with pytest.raises(ScamlError, match="no missing.json"):
        read_manifest(tmp_path / "missing.json", kind=None, format_version=1, what="thing")


def _imports(path: Path) -> set[str]:
    """Sibling modules a module of ``scaml.vae`` imports (``from .x import``), at any depth in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_vae_modules_have_no_import_cycles_and_io_is_a_leaf():
    modules = {p.stem: _imports(p) for p in (SRC / "vae").glob("*.py") if p.stem != "__init__"}
    assert not modules["io"] & {"model", "surgery", "training", "data"}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in modules.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = [name for name in modules if reaches(name, name, {name})]
    assert not cycles, cycles


def test_no_copies_of_the_old_modules_and_no_global_matplotlib_changes():
    assert not (SRC / "transfer.py").exists() and not (SRC / "mapping.py").exists()
    assert not (SRC / "harmony" / "reference.py").exists()
    for path in [*(SRC / "mapping").glob("*.py"), *(SRC / "vae").glob("*.py")]:
        text = path.read_text()
        assert "matplotlib.use(" not in text and "rcParams" not in text, path.name
    with pytest.raises(ModuleNotFoundError):
        __import__("scaml.transfer")
