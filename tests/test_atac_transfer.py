"""RNA -> ATAC label transfer through gene activity (`scaml map --modality atac`): simulated matched sets
(accuracy on shared types, absent types flagged), the CLI at 20,000 ATAC cells, bad inputs, fragments-based
gene activity, and real data (Granja bone marrow with the ArchR hg19 genes of tests/data; Signac's
atac_small; skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from scaml import atac
from scaml.cli import main
from scaml.datasets import simulate_rna_atac
from scaml.errors import ScamlError
from scaml.mapping import build_reference, map_query
from scaml.mapping.atac_query import (
    centroid_confidence,
    neighbour_vote,
    reference_genes,
    smooth_counts,
)

DATA = Path(__file__).parent / "data"
HG19_GENES = DATA / "archr_hg19_genes.bed.gz"
FRAGMENTS = DATA / "signac_atac_small_fragments.tsv.gz"
SHARED = ["type_A", "type_B", "type_C"]


@pytest.fixture(scope="module")
def sim():
    return simulate_rna_atac(1200, 2000, 800, 5, n_rna_types=3, random_state=0)


@pytest.fixture(scope="module")
def sym_ref(sim, tmp_path_factory):
    rna, _, _ = sim
    return build_reference(rna, "symphony", "batch", "cell_type", tmp_path_factory.mktemp("ref") / "ref",
                           random_state=0)


def _bed(genes: pd.DataFrame, path: Path) -> Path:
    table = pd.DataFrame({0: genes["chrom"], 1: genes["start"] - 1, 2: genes["end"], 3: genes["gene"], 4: 0,
                          5: genes["strand"]})
    table.to_csv(path, sep="\t", header=False, index=False)
    return path


def _flagged(mapped: ad.AnnData) -> np.ndarray:
    """Called Unknown, or mapping confidence below 0.5."""
    return ((mapped.obs["predicted_cell_type"].astype(str) == "Unknown").to_numpy()
            | (mapped.obs["mapping_confidence"].to_numpy() < 0.5))


# ----------------------------------------------------------------------------- simulation

def test_simulate_rna_atac_is_matched_and_reproducible(sim):
    rna, peaks, genes = sim
    assert sorted(rna.obs["cell_type"].unique()) == SHARED
    assert sorted(peaks.obs["cell_type"].unique()) == [*SHARED, "type_D", "type_E"]
    assert list(genes.columns) == ["gene", "chrom", "start", "end", "strand", "tss"]
    assert list(rna.var_names) == list(genes["gene"]) and atac.looks_like_peaks(peaks.var_names)
    again = simulate_rna_atac(1200, 2000, 800, 5, n_rna_types=3, random_state=0)
    assert (again[1].X != peaks.X).nnz == 0 and (again[0].X != rna.X).nnz == 0
    # gene activity follows the RNA of the same type
    ga = atac.gene_activity(peaks, genes, layer=None)
    lg = np.log1p(pd.DataFrame(ga.X.toarray(), columns=ga.var_names).groupby(peaks.obs["cell_type"].to_numpy()).mean())
    lr = np.log1p(pd.DataFrame(rna.X.toarray(), columns=rna.var_names).groupby(rna.obs["cell_type"].to_numpy()).mean())
    lg, lr = lg[lr.columns], lr
    r = [np.corrcoef((lg.loc[t] - lg.loc[SHARED].mean()), (lr.loc[t] - lr.mean()))[0, 1] for t in SHARED]
    assert min(r) > 0.5, r


def test_atac_transfer_shared_types_right_absent_types_flagged(sim, sym_ref, tmp_path):
    _, peaks, genes = sim
    mapped = map_query(sym_ref, peaks, tmp_path / "m", modality="atac", genes=genes, label_key="cell_type",
                       umap=False)
    truth = peaks.obs["cell_type"].astype(str).to_numpy()
    shared = np.isin(truth, SHARED)
    called = mapped.obs["predicted_cell_type"].astype(str).to_numpy()
    assert (called[shared] == truth[shared]).mean() > 0.95
    flagged = _flagged(mapped)
    assert flagged[~shared].mean() > 0.6 and flagged[shared].mean() < 0.05
    assert (mapped.obs["mapping_confidence"][~shared].median() < 0.5 < mapped.obs["mapping_confidence"][shared].median())
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["parameters"]["modality"] == "atac" and run["data"]["atac"]["n_shared_genes"] == 800
    assert run["data"]["atac"]["smooth_neighbors"] == 20 and run["data"]["atac"]["graph_embedding"] == "spectral"
    assert run["data"]["label_transfer"]["neighbour_vote"] == 20
    ga = ad.read_h5ad(tmp_path / "m" / "gene_activity.h5ad")
    assert ga.n_obs == peaks.n_obs and ga.uns["gene_activity"]["source"] == "peaks"


def test_atac_query_with_an_empty_cell_maps(sim, sym_ref, tmp_path):
    """A cell without peak counts (no similarity to any other) does not stop the spectral neighbour graph."""
    _, peaks, genes = sim
    query = peaks[:400].copy()
    X = query.X.tolil()
    X[5, :] = 0
    query.X = X.tocsr()
    mapped = map_query(sym_ref, query, tmp_path / "m", modality="atac", genes=genes, label_key="cell_type",
                       umap=False)
    assert mapped.n_obs == 400 and mapped.obs["predicted_cell_type"].notna().all()
    assert np.isfinite(mapped.obsm["X_scaml_latent"]).all()


def test_smoothing_vote_and_confidence_helpers():
    neighbors = np.array([[1], [0], [1]])
    assert np.array_equal(smooth_counts(np.eye(3), neighbors).toarray(), [[1, 1, 0], [1, 1, 0], [0, 1, 1]])
    voted = neighbour_vote(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), neighbors)
    assert np.allclose(voted, [[0.5, 0.5], [0.5, 0.5], [0.0, 1.0]])
    ref = np.array([[1.0, 0.0], [1.1, 0.0], [-1.0, 0.0], [-1.1, 0.0], [0.0, 1.0], [0.0, 1.1]])
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    conf = centroid_confidence(ref, labels, np.array([[2.0, -0.35], [0.0, 0.35]]))
    assert conf[0] > 0.9 and conf[1] < 0.2


def test_peak_references_are_refused():
    fake = SimpleNamespace(method="peakvi", path=Path("ref_peaks"))
    with pytest.raises(ScamlError, match="peakvi peak model: map ATAC peaks onto it directly") as err:
        reference_genes(fake)
    assert "\n" not in str(err.value)


def test_scvi_reference_takes_the_activity_by_surgery(tmp_path):
    rna, peaks, genes = simulate_rna_atac(400, 500, 300, 3, n_rna_types=2, n_markers=20, random_state=2)
    ref = build_reference(rna, "scvi", "batch", "cell_type", tmp_path / "ref", max_epochs=5, n_hvg=None,
                          random_state=0, n_threads=1)
    mapped = map_query(ref, peaks, tmp_path / "m", modality="atac", genes=genes, max_epochs=3, umap=False,
                       train_params={"n_threads": 1})
    assert mapped.obsm["X_scaml_latent"].shape == (500, 10)
    assert set(mapped.obs["predicted_cell_type"].astype(str)) <= {"type_A", "type_B", "Unknown"}
    assert json.loads((tmp_path / "m" / "run.json").read_text())["data"]["atac"]["n_shared_genes"] == 300


# ----------------------------------------------------------------------------- CLI

def test_map_atac_cli_20000_cells(tmp_path):
    rna, peaks, genes = simulate_rna_atac(1000, 20_000, 800, 5, n_rna_types=3, mean_depth=600, random_state=1)
    ref = build_reference(rna, "symphony", "batch", "cell_type", tmp_path / "ref", random_state=0)
    peaks.write_h5ad(tmp_path / "atac.h5ad")
    bed = _bed(genes, tmp_path / "genes.bed")
    code = main(["map", "--reference", str(ref), "--query", str(tmp_path / "atac.h5ad"), "--modality", "atac",
                 "--genes", str(bed), "--label-key", "cell_type", "--out", str(tmp_path / "m"), "--no-umap", "--quiet"])
    assert code == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    predictions = pd.read_csv(tmp_path / "m" / "predictions.csv", index_col=0)
    assert len(predictions) == 20_000 and "mapping_confidence" in predictions.columns
    shared = predictions["cell_type"].isin(SHARED).to_numpy()
    right = (predictions["predicted_cell_type"] == predictions["cell_type"]).to_numpy()
    assert right[shared].mean() > 0.95 and metrics["weighted_knn"]["accuracy"] > 0.5
    assert ((predictions["predicted_cell_type"] == "Unknown") | (predictions["mapping_confidence"] < 0.5))[~shared].mean() > 0.6


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_map_atac_cli_bad_inputs(sim, sym_ref, tmp_path, capsys):
    _, peaks, genes = sim
    small = peaks[:300].copy()
    small.write_h5ad(tmp_path / "atac.h5ad")
    base = ["map", "--reference", str(sym_ref), "--query", str(tmp_path / "atac.h5ad"), "--no-umap"]
    bed = _bed(genes, tmp_path / "genes.bed")
    # --modality atac without an annotation
    assert main([*base, "--modality", "atac", "--out", str(tmp_path / "o1")]) == 2
    assert "--genes" in _error_line(capsys)
    # an annotation without --modality atac
    assert main([*base, "--genes", str(bed), "--out", str(tmp_path / "o2")]) == 2
    assert "--modality atac" in _error_line(capsys)
    # another genome build: the genes lie where no peak is
    moved = genes.assign(start=genes["start"] + 500_000_000, end=genes["end"] + 500_000_000)
    assert main([*base, "--modality", "atac", "--genes", str(_bed(moved, tmp_path / "hg38.bed")),
                 "--out", str(tmp_path / "o3")]) == 2
    line = _error_line(capsys)
    assert "no peak overlaps any of the 800 annotated genes" in line and "another genome build" in line
    # genes named otherwise than the reference's
    renamed = genes.assign(gene=[f"ENSG{i:011d}" for i in range(len(genes))])
    assert main([*base, "--modality", "atac", "--genes", str(_bed(renamed, tmp_path / "ens.bed")),
                 "--out", str(tmp_path / "o4")]) == 2
    line = _error_line(capsys)
    assert "none of the 800 annotated genes with gene activity" in line and "ENSG00000000000" in line
    # a negative smoothing
    assert main([*base, "--modality", "atac", "--genes", str(bed), "--smooth-neighbors", "-1",
                 "--out", str(tmp_path / "o5")]) == 2
    assert "smooth_neighbors must be a whole number >= 0" in _error_line(capsys)
    # a fragments file of other cells
    assert main([*base, "--modality", "atac", "--genes", str(bed), "--fragments", str(FRAGMENTS),
                 "--out", str(tmp_path / "o6")]) == 2
    assert "only 0 of 300 cell barcodes occur in fragments file" in _error_line(capsys)
    # nothing was written for any refused run
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))
    with pytest.raises(ScamlError, match="unknown modality 'protein'"):
        map_query(sym_ref, small, tmp_path / "o7", modality="protein", genes=genes)


# ----------------------------------------------------------------------------- real data

def test_fragment_gene_activity_on_atac_small_and_signacs_matrix(shared_data):
    """Fragments over gene body + 2 kb of the real hg19 genes; Signac's shipped matrix can only be checked per cell.

    The 100 fragments of tests/data lie in chr1:10,245-779,777 and atac_small's peaks on chr1, while the 500
    genes of Signac's shipped gene-activity matrix are chrX genes: no gene is in both, so only the per-cell
    totals (both track each cell's depth) can be compared.
    """
    peaks = ad.read_h5ad(shared_file(shared_data, "atac", "signac_atac_small_peaks.h5ad"))
    signac = ad.read_h5ad(shared_file(shared_data, "atac", "signac_atac_small_geneactivity.h5ad"))
    genes = atac.read_gene_annotation(HG19_GENES)
    from_fragments = atac.gene_activity(peaks, genes, fragments=FRAGMENTS)
    frags = atac.read_fragments(FRAGMENTS)
    # by hand: LINC00115 (chr1:761,586-762,902, minus strand) + 2 kb upstream = 761,586-764,902
    hand = frags[(frags["chrom"] == "chr1") & (frags["end"] >= 761_586) & (frags["start"] + 1 <= 764_902)]
    got = from_fragments[:, "LINC00115"].X.toarray().ravel()
    assert got.sum() == len(hand) > 0
    assert dict(zip(from_fragments.obs_names[got > 0], got[got > 0], strict=True)) == hand["barcode"].value_counts().to_dict()
    from_peaks = atac.gene_activity(peaks, genes, layer=None)
    assert set(genes.loc[genes["gene"].isin(signac.var_names), "chrom"]) == {"chrX"}
    assert from_peaks.var_names.intersection(signac.var_names).empty
    ours = np.log1p(np.asarray(from_peaks.X.sum(axis=1)).ravel())
    theirs = np.log1p(np.asarray(signac[from_peaks.obs_names].X.sum(axis=1)).ravel())
    assert np.corrcoef(ours, theirs)[0, 1] > 0.6


def test_granja_rna_to_atac(shared_data, tmp_path):
    rna = ad.read_h5ad(shared_file(shared_data, "atac", "granja_bmmc_rna.h5ad"))
    peaks = ad.read_h5ad(shared_file(shared_data, "atac", "granja_bmmc_atac.h5ad"))
    ref = build_reference(rna, "symphony", "batch", "cell_type", tmp_path / "ref", n_hvg=rna.n_vars, random_state=0)
    mapped = map_query(ref, peaks, tmp_path / "m", modality="atac", genes=HG19_GENES, label_key="cell_type",
                       umap=False)
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["data"]["atac"]["n_shared_genes"] == 554
    truth = peaks.obs["cell_type"].astype(str).to_numpy()
    shared = np.isin(truth, ["01_HSC", "17_B", "19_CD8.N"])
    called = mapped.obs["predicted_cell_type"].astype(str).to_numpy()
    # 5000 random peaks: a median of 23 activity counts per cell on the shared genes; the spectral neighbours
    # and the neighbour vote: 0.91 on the shared types, 18 % of the absent ones Unknown (benchmarks/README.md)
    assert (called[shared] == truth[shared]).mean() > 0.85
    for label in ("17_B", "19_CD8.N"):
        assert (called[truth == label] == label).mean() > 0.75
    assert (called[~shared] == "Unknown").mean() > 0.1
    assert (called[truth == "15_CLP.2"] == "Unknown").mean() > 0.3
