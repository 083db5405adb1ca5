"""scaml.tcr: the TCR chains from every layout, bad inputs, clonotypes, the clonotype split, the CLI.

Simulated T cells (:func:`scaml.datasets.simulate_tcr`), and scirpy's wu2020 subset from
../shared/data/tcr (skipped when absent).
"""

from __future__ import annotations

import json
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_file

from scaml import tcr
from scaml.cli import main
from scaml.datasets import simulate_tcr
from scaml.errors import ScamlError
from scaml.tcr.encode import GENE_UNKNOWN, build_vocabularies, encode_table
from scaml.vae.mvtcr import clonotype_split

IR_NAMES = {"tcr_alpha_cdr3": "IR_VJ_1_cdr3", "tcr_alpha_v": "IR_VJ_1_v_gene", "tcr_alpha_j": "IR_VJ_1_j_gene",
            "tcr_beta_cdr3": "IR_VDJ_1_cdr3", "tcr_beta_v": "IR_VDJ_1_v_gene", "tcr_beta_j": "IR_VDJ_1_j_gene"}


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    return simulate_tcr(300, 200, n_batches=2, n_clusters=3, random_state=0)


def _truth(adata: ad.AnnData) -> pd.DataFrame:
    """The simulated chains from the IR columns, with the shipped 'None' / 'nan' strings as None."""
    out = pd.DataFrame(index=adata.obs_names)
    for name, source in IR_NAMES.items():
        values = adata.obs[source].astype(str).to_numpy(dtype=object)
        out[name] = [None if v in ("None", "nan") else v for v in values]
    return out


def _contig_rows(adata: ad.AnnData, table: pd.DataFrame) -> pd.DataFrame:
    """A 10x filtered_contig_annotations.csv of the cells, with decoy contigs that must be skipped."""
    rows = []
    for barcode, r in table.iterrows():
        for chain, name in (("TRA", "alpha"), ("TRB", "beta")):
            if r[f"tcr_{name}_cdr3"] is None:
                continue
            base = {"barcode": barcode, "is_cell": "true", "high_confidence": "true", "chain": chain,
                    "v_gene": r[f"tcr_{name}_v"], "d_gene": "None", "j_gene": r[f"tcr_{name}_j"],
                    "c_gene": f"{chain}C", "full_length": "true", "cdr3_nt": "TGTGCC"}
            rows.append({**base, "contig_id": f"{barcode}_{chain}_1", "productive": "true",
                         "cdr3": r[f"tcr_{name}_cdr3"], "reads": "900", "umis": "6"})
            # a weaker productive chain of the same locus, and a stronger non-productive one: both skipped
            rows.append({**base, "contig_id": f"{barcode}_{chain}_2", "productive": "true",
                         "cdr3": "CASSLGQF", "reads": "50", "umis": "2"})
            rows.append({**base, "contig_id": f"{barcode}_{chain}_3", "productive": "false",
                         "cdr3": "CAVRQF", "reads": "3000", "umis": "20"})
    rows.append({"barcode": "NOTACELL-1", "is_cell": "false", "high_confidence": "true", "chain": "TRB",
                 "contig_id": "x", "productive": "true", "cdr3": "CASSQQF", "v_gene": "TRBV1", "j_gene": "TRBJ1-1",
                 "reads": "5", "umis": "1"})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- layouts

def test_ir_layout_with_none_strings(cells):
    table = tcr.read_tcr(cells)
    assert table.attrs["layout"] == "ir" and list(table.columns) == list(tcr.TCR_COLUMNS)
    truth = _truth(cells)
    assert table.equals(truth.loc[:, table.columns]) or (table.fillna("-") == truth.fillna("-")).all().all()
    # the shipped strings 'None' (CDR3) and 'nan' (genes) are missing chains, not sequences
    assert not table.isin(["None", "nan"]).any().any()
    counts = tcr.chain_counts(table)
    assert counts["alpha_only"] > 0 and counts["beta_only"] > 0 and counts["none"] == 0
    assert sum(counts.values()) == cells.n_obs


def test_airr_columns_layout(cells):
    flat = simulate_tcr(300, 200, n_batches=2, n_clusters=3, layout="airr-columns", random_state=0)
    assert "VJ_1_junction_aa" in flat.obs and "IR_VJ_1_cdr3" not in flat.obs
    table = tcr.read_tcr(flat, report=False)
    assert table.attrs["layout"] == "airr-columns"
    assert (table.fillna("-") == _truth(cells).fillna("-")).all().all()


def test_airr_obsm_layout_with_and_without_chain_indices(cells):
    truth = _truth(cells)
    airr = np.empty(cells.n_obs, dtype=object)
    indices = []
    for i, (_, r) in enumerate(truth.iterrows()):
        chains, idx = [], {"VJ": [], "VDJ": []}
        for locus, name, arm in (("TRA", "alpha", "VJ"), ("TRB", "beta", "VDJ")):
            if r[f"tcr_{name}_cdr3"] is not None:
                # a non-productive chain with more UMIs first: skipped without chain indices
                chains.append({"locus": locus, "junction_aa": "CAWW", "v_call": "X", "j_call": "Y",
                               "productive": False, "duplicate_count": 99})
                idx[arm].append(len(chains))
                chains.append({"locus": locus, "junction_aa": r[f"tcr_{name}_cdr3"], "v_call": r[f"tcr_{name}_v"],
                               "j_call": r[f"tcr_{name}_j"], "productive": True, "duplicate_count": 5})
        airr[i] = chains
        indices.append(idx)
    with_idx = ad.AnnData(obs=pd.DataFrame(index=cells.obs_names))
    with_idx.obsm["airr"] = airr
    no_idx = with_idx.copy()
    chain_indices = np.empty(cells.n_obs, dtype=object)
    chain_indices[:] = indices
    with_idx.obsm["chain_indices"] = chain_indices
    for adata in (with_idx, no_idx):
        table = tcr.read_tcr(adata, report=False)
        assert table.attrs["layout"] == "airr"
        assert (table.fillna("-") == truth.fillna("-")).all().all()


def test_airr_obsm_as_awkward_arrays_through_h5ad(cells, tmp_path):
    """scirpy >= 0.13 stores obsm["airr"] and obsm["chain_indices"] as awkward arrays; they survive an h5ad round trip."""
    ak = pytest.importorskip("awkward")
    truth = _truth(cells)
    chains_per_cell, indices = [], []
    for _, r in truth.iterrows():
        chains, idx = [], {"VJ": [], "VDJ": [], "multichain": False}
        for locus, name, arm in (("TRA", "alpha", "VJ"), ("TRB", "beta", "VDJ")):
            if r[f"tcr_{name}_cdr3"] is not None:
                idx[arm].append(len(chains))
                chains.append({"locus": locus, "junction_aa": r[f"tcr_{name}_cdr3"], "v_call": r[f"tcr_{name}_v"],
                               "j_call": r[f"tcr_{name}_j"], "productive": True, "duplicate_count": 5})
        chains_per_cell.append(chains)
        indices.append(idx)
    adata = ad.AnnData(obs=pd.DataFrame(index=cells.obs_names))
    adata.obsm["airr"] = ak.Array(chains_per_cell)
    adata.obsm["chain_indices"] = ak.Array(indices)
    adata.write_h5ad(tmp_path / "airr.h5ad")
    back = ad.read_h5ad(tmp_path / "airr.h5ad")
    assert isinstance(back.obsm["airr"], ak.Array)
    for obj in (adata, back):
        table = tcr.read_tcr(obj, report=False)
        assert table.attrs["layout"] == "airr"
        assert (table.fillna("-") == truth.fillna("-")).all().all()


def test_contigs_joined_by_barcode(cells, tmp_path):
    truth = _truth(cells)
    path = tmp_path / "filtered_contig_annotations.csv"
    _contig_rows(cells, truth).to_csv(path, index=False)
    contigs = tcr.read_contigs(path)
    assert "NOTACELL-1" in contigs.index and contigs.loc["NOTACELL-1"].isna().all()
    bare = ad.AnnData(obs=pd.DataFrame(index=cells.obs_names))
    table = tcr.tcr_table(bare, contigs=path, report=False)
    assert (table.fillna("-") == truth.fillna("-")).all().all()
    # add_tcr writes the standard columns (categorical, h5ad-safe) that every reader finds first
    tcr.add_tcr(bare, contigs=path, report=False)
    assert tcr.detect_layout(bare) == "scaml"
    bare.write_h5ad(tmp_path / "with_tcr.h5ad")
    back = tcr.read_tcr(ad.read_h5ad(tmp_path / "with_tcr.h5ad"), report=False)
    assert (back.fillna("-") == truth.fillna("-")).all().all()
    # a cell without contigs has no chains, with a note
    part = ad.AnnData(obs=pd.DataFrame(index=[*cells.obs_names[:5], "ZZZZ-1"]))
    assert tcr.tcr_table(part, contigs=path, report=False).loc["ZZZZ-1"].isna().all()


def test_missing_chain_reported_once(cells, capsys):
    from scaml._utils import console

    with console.capture() as captured:
        tcr.read_tcr(cells)
    text = captured.get()
    assert text.count("\n") == 1 and "without alpha" in text and "without beta" in text


# ----------------------------------------------------------------------------- bad inputs

def test_no_tcr_columns_names_the_layouts(cells):
    bare = ad.AnnData(obs=pd.DataFrame({"batch": ["a"] * 3}, index=["c1", "c2", "c3"]))
    with pytest.raises(ScamlError, match="no TCR columns found") as err:
        tcr.read_tcr(bare)
    message = str(err.value)
    for expected in ("tcr_alpha_cdr3", "obsm['airr']", "VJ_1_junction_aa", "IR_VJ_1_cdr3", "--contigs"):
        assert expected in message
    assert "\n" not in message
    assert tcr.read_tcr(bare, required=False).isna().all().all()
    with pytest.raises(ScamlError, match="unknown TCR layout 'airr2'"):
        tcr.read_tcr(cells, "airr2")


@pytest.mark.parametrize("bad", ["CASS*LGF", "CASS LGF", "CASS1GF", "CAS_SF"])
def test_non_amino_acid_cdr3_is_refused(cells, bad):
    broken = cells[:20].copy()
    obs = broken.obs
    obs["IR_VDJ_1_cdr3"] = obs["IR_VDJ_1_cdr3"].astype(str)
    obs.iloc[3, obs.columns.get_loc("IR_VDJ_1_cdr3")] = bad
    with pytest.raises(ScamlError) as err:
        tcr.read_tcr(broken)
    message = str(err.value)
    assert repr(bad) in message and str(broken.obs_names[3]) in message and "amino-acid" in message
    assert "\n" not in message


def test_nucleotide_cdr3s_are_refused(cells):
    broken = cells[:20].copy()
    broken.obs["IR_VDJ_1_cdr3"] = "TGTGCCAGCAGTTTC"
    with pytest.raises(ScamlError, match="look like nucleotide"):
        tcr.read_tcr(broken)


def test_contigs_of_other_cells_are_refused(cells, tmp_path):
    path = tmp_path / "contigs.csv"
    _contig_rows(cells, _truth(cells)).to_csv(path, index=False)
    other = ad.AnnData(obs=pd.DataFrame(index=["AAACCTGAGAAACCAT-1", "AAACCTGAGAAACCGC-1"]))
    with pytest.raises(ScamlError, match="none of the 2 cell barcodes") as err:
        tcr.tcr_table(other, contigs=path)
    assert "AAACCTGAGAAACCAT-1" in str(err.value) and str(cells.obs_names[0]) in str(err.value)
    pd.DataFrame({"barcode": ["a"], "cdr3": ["CASS"]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ScamlError, match="lacks the column"):
        tcr.read_contigs(tmp_path / "short.csv")
    with pytest.raises(ScamlError, match="does not exist"):
        tcr.read_contigs(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------- clonotypes, encoding, split

def test_clonotypes_from_a_column_or_from_identical_chains(cells):
    given = tcr.clonotypes(cells)
    assert (given == cells.obs["clonotype"].astype(str).to_numpy()).all()
    derived = ad.AnnData(obs=cells.obs.drop(columns=["clonotype"]))
    found = tcr.clonotypes(derived)
    # every simulated clonotype is one derived clonotype (identical chains), whatever the names
    truth = cells.obs["clonotype"].astype(str).to_numpy()
    for clone in np.unique(truth)[:50]:
        members = truth == clone
        same_chains = _truth(cells)[members].fillna("-").drop_duplicates().shape[0] == 1
        if same_chains:
            assert np.unique(found[members]).size == 1


def test_encoding_and_unknown_genes(cells):
    table = tcr.read_tcr(cells, report=False)
    vocab = build_vocabularies(table)
    arrays = encode_table(table, vocab, 25)
    assert arrays["tcr_cdr3"].shape == (cells.n_obs, 2, 25) and arrays["tcr_genes"].shape == (cells.n_obs, 4)
    missing_alpha = table["tcr_alpha_cdr3"].isna().to_numpy()
    assert (arrays["tcr_cdr3"][missing_alpha, 0] == 0).all() and (arrays["tcr_chains"][missing_alpha, 0] == 0).all()
    assert (arrays["tcr_genes"][missing_alpha, :2] == 0).all()
    first = table["tcr_beta_cdr3"].dropna().iloc[0]
    row = table.index.get_loc(table["tcr_beta_cdr3"].dropna().index[0])
    assert (arrays["tcr_cdr3"][row, 1, :len(first)] > 0).all() and (arrays["tcr_cdr3"][row, 1, len(first):] == 0).all()
    other = table.copy()
    other["tcr_beta_v"] = ["TRBV99-9" if v is not None else None for v in other["tcr_beta_v"]]
    codes = encode_table(other, vocab, 25)["tcr_genes"][:, 2]
    assert set(np.unique(codes)) <= {0, GENE_UNKNOWN}


def test_clonotype_split_keeps_clonotypes_on_one_side(cells):
    groups = cells.obs["clonotype"].astype(str).to_numpy()
    train, val = clonotype_split(groups, 0.2, torch.Generator().manual_seed(0))
    assert train.size + val.size == groups.size and np.intersect1d(train, val).size == 0
    assert not set(groups[train]) & set(groups[val])
    assert 0.15 < val.size / groups.size < 0.35
    again = clonotype_split(groups, 0.2, torch.Generator().manual_seed(0))
    assert np.array_equal(again[1], val)
    assert clonotype_split(groups[:1], 0.2, torch.Generator().manual_seed(0))[1].size == 0


def test_clonotype_neighbours_and_figure(cells, tmp_path):
    clones = cells.obs["clonotype"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    codes = pd.factorize(clones)[0]
    tight = rng.normal(size=(cells.n_obs, 5)) * 0.01 + rng.normal(size=(codes.max() + 1, 5))[codes]
    loose = rng.normal(size=(cells.n_obs, 5))
    nb, table = tcr.clonotype_neighbors(tight, clones, k=10)
    assert nb.indices.shape == (cells.n_obs, 10) and nb.distance_graph().shape == (cells.n_obs, cells.n_obs)
    assert np.isnan(table["clonotype_recall"][table["clonotype_size"] == 1]).all()
    assert tcr.clonotype_neighbor_rate(tight, clones) > 0.95 > 0.3 > tcr.clonotype_neighbor_rate(loose, clones)
    assert tcr.clonotype_distance_ratio(tight, clones) < 0.1 < tcr.clonotype_distance_ratio(loose, clones)
    labels = tcr.expanded_clonotype_labels(clones, top=5)
    assert len(labels.categories) == 5 and labels.categories[0].startswith("clone 1 (n=")
    # the figure's two panels (the UMAP itself is drawn by the CLI tests' builds)
    path = tcr.plot_tcr_latent(tight[:, :2], cells.obs["cell_type"].to_numpy(), clones, tmp_path / "fig.png",
                               cluster_name="cell_type")
    assert path.stat().st_size > 10_000
    rows = tcr.analysis.figure_cells(clones, max_cells=100)
    assert rows.size >= 100 and set(np.flatnonzero(labels.codes >= 0)) <= set(rows)


# ----------------------------------------------------------------------------- CLI

def _split(adata: ad.AnnData, query_batch: str) -> tuple[ad.AnnData, ad.AnnData]:
    return adata[adata.obs["patient"] != query_batch].copy(), adata[adata.obs["patient"] == query_batch].copy()


def test_cli_build_and_map(tmp_path):
    adata = simulate_tcr(600, 300, n_batches=3, n_clusters=4, random_state=2)
    ref, query = _split(adata, "patient3")
    ref.write_h5ad(tmp_path / "ref.h5ad")
    # the query's chains come from a 10x contig file joined by barcode
    table = tcr.read_tcr(query, report=False)
    _contig_rows(query, table).to_csv(tmp_path / "contigs.csv", index=False)
    query.obs = query.obs.drop(columns=[c for c in query.obs.columns if c.startswith("IR_")])
    query.write_h5ad(tmp_path / "query.h5ad")
    out = tmp_path / "refdir"
    assert main(["reference", "build", str(tmp_path / "ref.h5ad"), "--method", "mvtcr", "--batch-key", "patient",
                 "--label-key", "cell_type", "--out", str(out), "--max-epochs", "12", "--n-hvg", "200",
                 "--threads", "1", "--quiet"]) == 0
    manifest = json.loads((out / "reference.json").read_text())
    assert manifest["method"] == "mvtcr" and manifest["model"] == "MVTCR"
    assert manifest["tcr"]["layout"] == "ir" and manifest["tcr"]["clonotype_neighbor_rate_15nn"] > 0.3
    assert (out / "figures" / "tcr_latent_umap.png").stat().st_size > 10_000
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["tcr"]["beta_only"] > 0
    mapped_dir = tmp_path / "map"
    assert main(["map", "--reference", str(out), "--query", str(tmp_path / "query.h5ad"), "--out", str(mapped_dir),
                 "--contigs", str(tmp_path / "contigs.csv"), "--label-key", "cell_type", "--max-epochs", "10",
                 "--threads", "1", "--no-umap", "--quiet"]) == 0
    metrics = json.loads((mapped_dir / "metrics.json").read_text())
    assert metrics["weighted_knn"]["accuracy"] > 0.8
    mapped = ad.read_h5ad(mapped_dir / "mapped.h5ad")
    assert mapped.n_obs == query.n_obs and "tcr_clonotype" in mapped.obs
    assert json.loads((mapped_dir / "run.json").read_text())["data"]["tcr"]["clonotype_neighbor_rate_15nn"] > 0.2
    # contigs of other cells: one line, exit 2
    pd.DataFrame(_contig_rows(query, table).assign(barcode="OTHER-1")).to_csv(tmp_path / "other.csv", index=False)
    assert main(["map", "--reference", str(out), "--query", str(tmp_path / "query.h5ad"),
                 "--out", str(tmp_path / "bad"), "--contigs", str(tmp_path / "other.csv"), "--quiet"]) == 2
    # no TCR columns at all: a query is mapped by its expression, a build is refused (exit 2)
    query.write_h5ad(tmp_path / "no_tcr.h5ad")
    assert main(["map", "--reference", str(out), "--query", str(tmp_path / "no_tcr.h5ad"), "--out",
                 str(tmp_path / "map_expression"), "--max-epochs", "2", "--threads", "1", "--no-umap",
                 "--quiet"]) == 0
    assert main(["reference", "build", str(tmp_path / "no_tcr.h5ad"), "--method", "mvtcr", "--batch-key",
                 "patient", "--out", str(tmp_path / "bad_ref"), "--quiet"]) == 2


@pytest.mark.slow
def test_cli_build_and_map_at_scale(tmp_path):
    """``reference build --method mvtcr`` + ``map`` on >= 20,000 simulated T cells, few epochs, under ~40 s."""
    adata = simulate_tcr(27_000, 300, n_batches=4, n_clusters=5, random_state=3)
    ref, query = _split(adata, "patient4")
    assert ref.n_obs >= 20_000
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "query.h5ad")
    start = time.perf_counter()
    out = tmp_path / "refdir"
    assert main(["reference", "build", str(tmp_path / "ref.h5ad"), "--method", "mvtcr", "--batch-key", "patient",
                 "--label-key", "cell_type", "--out", str(out), "--max-epochs", "2", "--batch-size", "512",
                 "--n-hvg", "0", "--threads", "1", "--quiet"]) == 0
    assert main(["map", "--reference", str(out), "--query", str(tmp_path / "query.h5ad"), "--out",
                 str(tmp_path / "map"), "--label-key", "cell_type", "--max-epochs", "2", "--threads", "1",
                 "--no-umap", "--quiet"]) == 0
    seconds = time.perf_counter() - start
    metrics = json.loads((tmp_path / "map" / "metrics.json").read_text())
    print(f"mvtcr at scale: {seconds:.1f} s, {metrics['weighted_knn']}")
    assert metrics["weighted_knn"]["accuracy"] > 0.7
    assert (out / "figures" / "tcr_latent_umap.png").exists()


# ----------------------------------------------------------------------------- real data (wu2020)

@pytest.mark.realdata
def test_wu2020_chains(shared_data):
    adata = ad.read_h5ad(shared_file(shared_data, "tcr", "wu2020_200.h5ad"))
    table = tcr.read_tcr(adata)
    assert table.attrs["layout"] == "ir"
    counts = tcr.chain_counts(table)
    # MULTIMODAL.md: 126 cells with an alpha chain, 182 with a beta chain, 108 with both
    assert counts["both"] == 108 and counts["both"] + counts["alpha_only"] == 126
    assert counts["both"] + counts["beta_only"] == 182 and counts["none"] == 0
    assert table["tcr_alpha_cdr3"].dropna().str.startswith("C").mean() > 0.9
    clones = tcr.clonotypes(adata)
    assert np.unique(clones).size == 197  # the authors' clonotype_orig


@pytest.mark.realdata
def test_wu2020_cli_build_and_map(shared_data, tmp_path):
    adata = ad.read_h5ad(shared_file(shared_data, "tcr", "wu2020_200.h5ad"))
    query_patients = list(adata.obs["patient"].cat.categories[-3:])
    is_query = adata.obs["patient"].isin(query_patients).to_numpy()
    adata[~is_query].copy().write_h5ad(tmp_path / "ref.h5ad")
    adata[is_query].copy().write_h5ad(tmp_path / "query.h5ad")
    out = tmp_path / "refdir"
    assert main(["reference", "build", str(tmp_path / "ref.h5ad"), "--method", "mvtcr", "--batch-key", "patient",
                 "--label-key", "cell_type", "--out", str(out), "--max-epochs", "30", "--threads", "1",
                 "--quiet"]) == 0
    assert json.loads((out / "reference.json").read_text())["tcr"]["layout"] == "ir"
    assert main(["map", "--reference", str(out), "--query", str(tmp_path / "query.h5ad"), "--out",
                 str(tmp_path / "map"), "--label-key", "cell_type", "--max-epochs", "10", "--threads", "1",
                 "--no-umap", "--quiet"]) == 0
    mapped = ad.read_h5ad(tmp_path / "map" / "mapped.h5ad")
    assert mapped.n_obs == int(is_query.sum()) and np.isfinite(mapped.obsm["X_scaml_latent"]).all()
