"""CITE-seq input: protein counts in obsm, 10x feature barcoding, per-batch panels, name matching, bad input."""

from __future__ import annotations

import gzip
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from conftest import shared_file

from scaml.cite import (
    clr,
    get_protein_counts,
    match_proteins,
    protein_key_of,
    protein_panels,
    read_cite,
    split_feature_types,
)
from scaml.datasets import simulate_cite
from scaml.errors import ScamlError


@pytest.fixture(scope="module")
def cite() -> ad.AnnData:
    return simulate_cite(300, 200, 10, n_batches=2, n_cell_types=4, n_missing=2, random_state=3)


def test_simulate_cite_truth(cite):
    proteins = cite.obsm["protein_expression"]
    assert proteins.shape == (300, 10)
    assert set(cite.uns["protein_panel_missing"]["batch2"]) == {"type_A_p0", "type_A_p1"}
    hidden = (cite.obs["batch"] == "batch2").to_numpy()
    assert (proteins.loc[hidden, ["type_A_p0", "type_A_p1"]].to_numpy() == 0).all()
    assert cite.obsm["protein_expression_full"].loc[hidden, "type_A_p0"].sum() > 0
    # a type's marker is in the foreground in most of its cells
    fore = cite.obsm["protein_foreground"]
    is_a = (cite.obs["cell_type"] == "type_A").to_numpy()
    assert fore.loc[is_a, "type_A_p0"].mean() > 0.8 > 0.1 > fore.loc[~is_a, "type_A_p0"].mean()


def test_dataframe_and_array_inputs_agree(cite):
    frame = get_protein_counts(cite)
    other = cite.copy()
    other.obsm["protein_expression"] = cite.obsm["protein_expression"].to_numpy()
    other.uns["protein_names"] = np.asarray(frame.names)
    array = get_protein_counts(other)
    assert array.names == frame.names
    np.testing.assert_array_equal(array.counts, frame.counts)
    other.obsm["protein_expression"] = sp.csr_matrix(other.obsm["protein_expression"])
    np.testing.assert_array_equal(get_protein_counts(other).counts, frame.counts)


@pytest.mark.parametrize("value, word", [(-2.0, "negative"), (1.5, "non-integer"), (np.nan, "NaN")])
def test_bad_protein_counts_name_the_value_and_fix(cite, value, word):
    bad = cite.copy()
    frame = bad.obsm["protein_expression"].copy()
    frame.iloc[4, 3] = value
    bad.obsm["protein_expression"] = frame
    with pytest.raises(ScamlError, match=word) as err:
        get_protein_counts(bad)
    message = str(err.value)
    assert frame.columns[3] in message and bad.obs_names[4] in message and "raw antibody" in message
    assert "\n" not in message


def test_duplicated_and_missing_names_are_refused(cite):
    bad = cite.copy()
    frame = bad.obsm["protein_expression"].copy()
    frame.columns = ["CD3", "CD3", *frame.columns[2:]]
    bad.obsm["protein_expression"] = frame
    with pytest.raises(ScamlError, match=r"duplicated protein names \['CD3'\]"):
        get_protein_counts(bad)
    bad.obsm["protein_expression"] = frame.to_numpy()
    with pytest.raises(ScamlError, match="uns\\['protein_names'\\]"):
        get_protein_counts(bad)
    bad.uns["protein_names"] = ["a", "b"]
    with pytest.raises(ScamlError, match="2 names but"):
        get_protein_counts(bad)
    with pytest.raises(ScamlError, match="no key 'adt'"):
        get_protein_counts(cite, "adt")


def test_names_matching_ignores_case_and_kit_suffix():
    assert protein_key_of("CD3_TotalSeqB") == protein_key_of("cd3") == protein_key_of("CD3-ADT") == "cd3"
    assert protein_key_of("HLA-DR_TotalSeqC") == protein_key_of("HLA_DR") == "hladr"
    match = match_proteins(["CD3", "CD4", "HLA-DR", "CD8a", "CD19"],
                           ["cd3_TotalSeqB", "CD4", "HLA_DR-ADT", "CD45", "CD19"])
    assert match.positions.tolist() == [0, 1, 2, -1, 4]
    assert match.exact == ["CD4", "CD19"]
    assert sorted(match.loose) == [("CD3", "cd3_TotalSeqB"), ("HLA-DR", "HLA_DR-ADT")]
    assert match.missing == ["CD8a"] and match.extra == ["CD45"]
    line = match.describe()
    assert "'cd3_TotalSeqB' -> 'CD3'" in line and "CD8a" in line and "CD45" in line
    with pytest.raises(ScamlError, match="share no name"):
        match_proteins(["CD3", "CD4"], ["CD19", "CD14"])


def test_ambiguous_loose_names_are_not_matched():
    match = match_proteins(["CD3", "CD4"], ["cd3_TotalSeqA", "CD3-ADT", "CD4"])
    assert match.positions.tolist() == [-1, 2]
    with pytest.raises(ScamlError, match="share no name"):
        match_proteins(["CD3"], ["cd3_TotalSeqA", "CD3-ADT"])


def test_protein_panels_find_the_missing_proteins(cite):
    counts = get_protein_counts(cite)
    panels = protein_panels(counts.counts, cite.obs["batch"].to_numpy(), counts.names)
    assert panels["batch1"].all()
    assert [counts.names[j] for j in np.flatnonzero(~panels["batch2"])] == ["type_A_p0", "type_A_p1"]


def test_clr_centres_each_cell():
    values = clr(np.array([[0, 9, 99], [5, 5, 5]]))
    np.testing.assert_allclose(values.sum(axis=1), 0.0, atol=1e-5)


def _tenx_parts(n_cells: int = 40):
    rng = np.random.default_rng(0)
    genes = [f"GENE{i}" for i in range(30)]
    proteins = ["CD3_TotalSeqB", "CD4_TotalSeqB", "CD19_TotalSeqB"]
    names = genes + proteins + ["guide1"]
    types = ["Gene Expression"] * 30 + ["Antibody Capture"] * 3 + ["CRISPR Guide Capture"]
    X = sp.csr_matrix(rng.poisson(2.0, (n_cells, len(names))).astype(np.float32))
    barcodes = [f"AAAC{i:04d}-1" for i in range(n_cells)]
    return X, names, types, barcodes


def _write_10x_h5(path, X, names, types, barcodes) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.asarray(barcodes, dtype="S"))
        m.create_dataset("data", data=X.data.astype(np.int32))
        m.create_dataset("indices", data=X.indices.astype(np.int64))
        m.create_dataset("indptr", data=X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.asarray([X.shape[1], X.shape[0]], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("id", data=np.asarray([f"ID_{n}" for n in names], dtype="S"))
        feats.create_dataset("name", data=np.asarray(names, dtype="S"))
        feats.create_dataset("feature_type", data=np.asarray(types, dtype="S"))
        feats.create_dataset("genome", data=np.asarray(["GRCh38"] * len(names), dtype="S"))
        feats.create_dataset("_all_tag_keys", data=np.asarray(["genome"], dtype="S"))


def _write_10x_mtx(folder, X, names, types, barcodes) -> None:
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.coo_matrix(X.T.astype(np.int64)))
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"ID_{n}\t{n}\t{t}\n" for n, t in zip(names, types, strict=True))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"{b}\n" for b in barcodes)


@pytest.mark.parametrize("kind", ["h5", "mtx"])
def test_read_cite_splits_antibody_capture(tmp_path, kind):
    X, names, types, barcodes = _tenx_parts()
    path = tmp_path / ("sample.h5" if kind == "h5" else "filtered_feature_bc_matrix")
    (_write_10x_h5 if kind == "h5" else _write_10x_mtx)(path, X, names, types, barcodes)
    adata = read_cite(path)
    assert adata.n_vars == 30 and list(adata.var_names[:2]) == ["GENE0", "GENE1"]
    proteins = adata.obsm["protein_expression"]
    assert isinstance(proteins, pd.DataFrame)
    assert list(proteins.columns) == ["CD3_TotalSeqB", "CD4_TotalSeqB", "CD19_TotalSeqB"]
    np.testing.assert_array_equal(proteins.to_numpy(), X[:, 30:33].toarray())
    np.testing.assert_array_equal(adata.X.toarray(), X[:, :30].toarray())
    assert get_protein_counts(adata).counts.shape == (40, 3)


def test_split_feature_types_leaves_rna_only_data_alone(small_counts):
    assert split_feature_types(small_counts) is small_counts


def test_real_panels_match_the_shipped_list(shared_data):
    """pbmc_protein_5k10k: the 15 proteins outside the 10k panel are found missing in pbmc10k, not zero."""
    adata = ad.read_h5ad(shared_file(shared_data, "cite", "pbmc_protein_5k10k.h5ad"))
    counts = get_protein_counts(adata)
    assert len(counts.names) == 29
    panels = protein_panels(counts.counts, adata.obs["batch"].to_numpy(), counts.names)
    found = sorted(counts.names[j] for j in np.flatnonzero(~panels["pbmc10k"]))
    assert found == sorted(map(str, adata.uns["protein_panel_missing"]["pbmc10k"]))
    assert panels["pbmc5k"].all()
    # the 10k sample's own file, matched to the combined panel by name
    small = ad.read_h5ad(shared_file(shared_data, "cite", "pbmc10k_protein_200.h5ad"))
    match = match_proteins(counts.names, get_protein_counts(small).names)
    assert match.n_matched == 14 and len(match.missing) == 15


def test_integrate_draws_protein_figures(tmp_path):
    """CITE-seq input to integrate: proteins on the UMAP and a protein x cluster dot plot (CLR, said so)."""
    from scaml.pipeline import integrate

    adata = simulate_cite(500, 400, 8, n_batches=2, n_cell_types=3, n_missing=1, mean_library_size=3000,
                          random_state=4)
    adata.var_names = [g if g.startswith("MT-") else f"G{i}" for i, g in enumerate(adata.var_names)]
    out = tmp_path / "integrated"
    result = integrate(adata, "batch", out, n_top_genes=200, n_pcs=10, evaluate=False, resolutions=[0.5])
    assert (out / "figures" / "protein_umap.png").stat().st_size > 10_000
    assert (out / "figures" / "protein_dotplot.png").stat().st_size > 5_000
    assert result.obsm["protein_clr"].shape == (result.n_obs, 8)
    run = json.loads((out / "run.json").read_text())
    proteins = run["data"]["proteins"]
    assert proteins["kind"] == "clr" and "no totalVI" in proteins["label"]
    assert proteins["missing"] == {"batch2": ["type_A_p0"]}


def test_h5ad_with_antibody_features_in_x_is_split(tmp_path):
    X, names, types, barcodes = _tenx_parts()
    adata = ad.AnnData(X=X, var=pd.DataFrame({"feature_types": types}, index=names),
                       obs=pd.DataFrame(index=barcodes))
    adata.write_h5ad(tmp_path / "mixed.h5ad")
    read = read_cite(tmp_path / "mixed.h5ad")
    assert read.n_vars == 30 and list(read.obsm["protein_expression"].columns) == names[30:33]
