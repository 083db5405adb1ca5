"""scATAC-seq: peak names, TF-IDF / LSI / depth check, QC with fragments, gene activity, 10x readers, and
`scaml integrate --modality atac` end to end on small simulated peaks."""

from __future__ import annotations

import gzip
import hashlib
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scaml import atac
from scaml.cli import main
from scaml.datasets import simulate_atac
from scaml.errors import ScamlError


@pytest.fixture(scope="module")
def peaks() -> ad.AnnData:
    return simulate_atac(n_cells=600, n_peaks=1500, n_batches=2, n_cell_types=4, mean_depth=600, random_state=3)


# ----------------------------------------------------------------------------- features

def test_parse_peak_names_both_styles_and_underscore_chromosomes():
    table = atac.parse_peak_names(["chr1-100-600", "chr2:1000-1500", "chrUn_gl000220-5-50", "1_10_20"])
    assert table["chrom"].tolist() == ["chr1", "chr2", "chrUn_gl000220", "1"]
    assert table["start"].tolist() == [100, 1000, 5, 10]
    assert table["end"].tolist() == [600, 1500, 50, 20]


def test_unparsable_peak_names_are_named_in_the_error():
    with pytest.raises(ScamlError, match="CD3E") as err:
        atac.parse_peak_names(["chr1-100-600", "CD3E", "chr1-5-1"])
    assert "\n" not in str(err.value)
    with pytest.raises(ScamlError, match="end before they start"):
        atac.parse_peak_names(["chr1-600-100"])


def test_peak_detection():
    assert atac.looks_like_peaks(["chr1-1-100", "chr1:5-200", "chrX-3-9"])
    assert not atac.looks_like_peaks(["CD3E", "MS4A1", "chr1-1-100"])


# ----------------------------------------------------------------------------- TF-IDF, LSI, depth

def test_tfidf_is_signacs_log_tf_idf():
    counts = np.array([[2, 0, 1], [0, 3, 1], [1, 1, 0]], dtype=np.float32)
    got = atac.tfidf(sp.csr_matrix(counts)).toarray()
    tf = counts / counts.sum(axis=1, keepdims=True)
    idf = counts.shape[0] / counts.sum(axis=0)
    np.testing.assert_allclose(got, np.log1p(tf * idf * 1e4), rtol=1e-5)
    binary = atac.tfidf(sp.csr_matrix(counts), binarize=True).toarray()
    b = (counts > 0).astype(float)
    np.testing.assert_allclose(binary, np.log1p(b / b.sum(1, keepdims=True) * 3 / b.sum(0) * 1e4), rtol=1e-5)


def test_depth_component_is_found_and_dropped(peaks):
    adata = peaks.copy()
    check = atac.run_lsi(adata, 10, random_state=0)
    depth = np.asarray(adata.layers["counts"].sum(axis=1)).ravel()
    assert check.dropped == [int(np.argmax(np.abs(check.correlations)))]
    assert abs(check.correlations[check.dropped[0]]) > 0.75
    assert "dropped" in check.describe() and f"component {check.dropped[0] + 1}" in check.describe()
    assert adata.obsm["X_lsi"].shape == (adata.n_obs, 10)
    kept = [abs(np.corrcoef(adata.obsm["X_lsi"][:, i], depth)[0, 1]) for i in range(10)]
    assert max(kept) < 0.75
    assert adata.uns["lsi"]["depth_component_dropped"] == check.dropped[0] + 1


def test_no_component_dropped_below_threshold():
    rng = np.random.default_rng(0)
    check = atac.depth_check(rng.normal(size=(200, 5)), rng.normal(size=200))
    assert check.dropped == [] and "all components kept" in check.describe()


def test_simulator_is_seeded_and_has_type_specific_peaks(peaks):
    again = simulate_atac(n_cells=600, n_peaks=1500, n_batches=2, n_cell_types=4, mean_depth=600, random_state=3)
    assert (peaks.X != again.X).nnz == 0
    assert atac.looks_like_peaks(peaks.var_names)
    specific = peaks.var["specific_to"] == "type_A"
    in_a = peaks.obs["cell_type"] == "type_A"
    frac = np.asarray(peaks.X[:, specific.to_numpy()].sum(axis=1)).ravel() / np.asarray(peaks.X.sum(axis=1)).ravel()
    assert frac[in_a.to_numpy()].mean() > 2 * frac[~in_a.to_numpy()].mean()


# ----------------------------------------------------------------------------- QC and fragments

def _peaks_adata() -> ad.AnnData:
    X = sp.csr_matrix(np.array([[1, 2, 0], [0, 1, 1]], dtype=np.float32))
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=["AAA-1", "CCC-1"]),
                       var=pd.DataFrame(index=["chr1-1001-1500", "chr1-5001-5500", "chr2-101-600"]))
    atac.add_peak_coordinates(adata)
    return adata


def _write_fragments(path, rows):
    with gzip.open(path, "wt") as handle:
        handle.write("# comment header\n")
        for row in rows:
            handle.write("\t".join(map(str, row)) + "\n")


def test_fragment_qc_counts_fragments_and_frip(tmp_path):
    adata = _peaks_adata()
    path = tmp_path / "fragments.tsv.gz"
    _write_fragments(path, [("chr1", 1100, 1200, "AAA-1", 1), ("chr1", 3000, 3100, "AAA-1", 2),
                            ("chr2", 550, 700, "CCC-1", 1), ("chr1", 5400, 5450, "OTHER-1", 1)])
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    summary = atac.fragment_qc(adata, path)
    assert adata.obs["n_fragments"].tolist() == [2, 1]
    np.testing.assert_allclose(adata.obs["frip"], [0.5, 1.0])
    assert summary["cells_with_fragments"] == 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_tss_enrichment_is_high_at_tss(tmp_path):
    adata = _peaks_adata()
    rows = [("chr1", 10_000 + d, 10_000 + d + 40, "AAA-1", 1) for d in range(-30, 30, 3)]
    rows += [("chr1", 10_000 - 1960, 10_000 - 1920, "AAA-1", 1), ("chr1", 11_920, 11_990, "AAA-1", 1)]
    rows += [("chr1", 10_000 - 1960 + 10 * i, 10_000 - 1940 + 10 * i, "CCC-1", 1) for i in range(4)]
    path = tmp_path / "fragments.tsv.gz"
    _write_fragments(path, rows)
    tss = pd.DataFrame({"chrom": ["chr1"], "tss": [10_000]})
    atac.fragment_qc(adata, path, tss=tss)
    assert adata.obs.loc["AAA-1", "tss_enrichment"] > 5
    assert adata.obs.loc["CCC-1", "tss_enrichment"] == 0


def test_fragment_qc_matches_ensembl_and_ucsc_chromosome_names(tmp_path):
    """Fragments on chr1 / chr2, peaks and TSS named 1 / 2 (Ensembl): the same FRiP and TSS enrichment."""
    rows = [("chr1", 10_000 + d, 10_000 + d + 40, "AAA-1", 1) for d in range(-30, 30, 3)]
    rows += [("chr1", 10_000 - 1960, 10_000 - 1920, "AAA-1", 1), ("chr1", 1100, 1200, "CCC-1", 1)]
    path = tmp_path / "fragments.tsv.gz"
    _write_fragments(path, rows)
    results = []
    for prefix in ("chr", ""):
        adata = ad.AnnData(X=sp.csr_matrix(np.ones((2, 2), dtype=np.float32)),
                           obs=pd.DataFrame(index=["AAA-1", "CCC-1"]),
                           var=pd.DataFrame(index=[f"{prefix}1-1001-1500", f"{prefix}2-101-600"]))
        atac.add_peak_coordinates(adata)
        atac.fragment_qc(adata, path, tss=pd.DataFrame({"chrom": [f"{prefix}1"], "tss": [10_000]}))
        results.append(adata.obs[["frip", "tss_enrichment"]])
    pd.testing.assert_frame_equal(results[0], results[1])
    assert results[1].loc["CCC-1", "frip"] == 1.0 and results[1].loc["AAA-1", "tss_enrichment"] > 5


def test_fragments_with_other_barcodes_are_refused(tmp_path):
    adata = _peaks_adata()
    path = tmp_path / "fragments.tsv.gz"
    _write_fragments(path, [("chr1", 1100, 1200, "GGG-1", 1), ("chr1", 1100, 1200, "TTT-1", 1)])
    with pytest.raises(ScamlError, match="0 of 2 cell barcodes") as err:
        atac.fragment_qc(adata, path)
    assert "\n" not in str(err.value)


def test_qc_filter_peaks():
    X = sp.csr_matrix(np.array([[5, 5, 0, 0], [1, 0, 0, 0], [3, 3, 3, 0]], dtype=np.float32))
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=[f"chr1-{i}00-{i}50" for i in range(1, 5)]))
    removed = atac.qc_filter_peaks(adata, min_counts=5, min_peaks=2, min_cells=2)
    assert adata.n_obs == 2 and adata.n_vars == 2
    assert removed == {"cells_removed_min_counts": 1, "cells_removed_min_peaks": 0, "peaks_removed_min_cells": 2}


# ----------------------------------------------------------------------------- gene activity

GTF_LINES = [
    # plus-strand gene at 10,001-20,000: upstream is 8,001-10,000
    'chr1\ttest\tgene\t10001\t20000\t.\t+\t.\tgene_id "G1"; gene_name "PLUS1"; gene_type "protein_coding";',
    'chr1\ttest\texon\t10001\t10500\t.\t+\t.\tgene_id "G1"; gene_name "PLUS1"; gene_type "protein_coding";',
    # minus-strand gene at 30,001-40,000: upstream is 40,001-42,000
    'chr1\ttest\tgene\t30001\t40000\t.\t-\t.\tgene_id "G2"; gene_name "MINUS1"; gene_type "protein_coding";',
    'chr1\ttest\tgene\t90001\t91000\t.\t+\t.\tgene_id "G3"; gene_name "LNC1"; gene_type "lncRNA";',
]


def _activity_peaks() -> ad.AnnData:
    names = ["chr1-8501-9000",    # 1.5 kb upstream of PLUS1 -> PLUS1
             "chr1-15001-15500",  # PLUS1 body
             "chr1-28501-29000",  # 1.5 kb *downstream* of MINUS1's end (its 5' is at 40,000) -> none
             "chr1-41001-41500",  # 1.5 kb upstream of MINUS1 -> MINUS1
             "chr1-90101-90200",  # LNC1 body
             "chr2-15001-15500"]  # other chromosome
    X = sp.csr_matrix(np.array([[1, 2, 4, 8, 16, 32], [0, 1, 0, 1, 0, 1]], dtype=np.float32))
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=["c1", "c2"]), var=pd.DataFrame(index=names))
    atac.add_peak_coordinates(adata)
    return adata


def test_gene_activity_is_strand_aware(tmp_path):
    gtf = tmp_path / "genes.gtf"
    gtf.write_text("\n".join(["#!genome-build test", *GTF_LINES]) + "\n")
    activity = atac.gene_activity(_activity_peaks(), gtf, upstream=2000)
    got = pd.DataFrame(activity.X.toarray(), index=activity.obs_names, columns=activity.var_names)
    assert got.loc["c1", "PLUS1"] == 3 and got.loc["c2", "PLUS1"] == 1
    assert got.loc["c1", "MINUS1"] == 8 and got.loc["c2", "MINUS1"] == 1
    assert got.loc["c1", "LNC1"] == 16
    coding = atac.gene_activity(_activity_peaks(), gtf, biotypes=("protein_coding",))
    assert sorted(coding.var_names) == ["MINUS1", "PLUS1"]
    no_promoter = atac.gene_activity(_activity_peaks(), gtf, upstream=0)
    assert no_promoter[:, "PLUS1"].X.toarray().ravel().tolist() == [2, 1]
    assert "MINUS1" not in no_promoter.var_names


def test_gene_activity_from_bed_and_ensembl_chromosome_names(tmp_path):
    bed = tmp_path / "genes.bed"  # 0-based starts; chromosome "1" as Ensembl writes it
    bed.write_text("1\t10000\t20000\tPLUS1\t0\t+\n1\t30000\t40000\tMINUS1\t0\t-\n")
    activity = atac.gene_activity(_activity_peaks(), bed)
    assert activity[:, "PLUS1"].X.toarray().ravel().tolist() == [3, 1]
    assert activity[:, "MINUS1"].X.toarray().ravel().tolist() == [8, 1]


def test_annotation_of_another_build_says_so(tmp_path):
    bed = tmp_path / "mouse.bed"
    bed.write_text("chr1\t50000000\t50010000\tGENE1\t0\t+\nchr7\t100\t1000\tGENE2\t0\t-\n")
    with pytest.raises(ScamlError, match="another genome build") as err:
        atac.gene_activity(_activity_peaks(), bed)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- 10x readers

def _write_10x_h5(path, adata: ad.AnnData, feature_types: list[str]) -> None:
    import h5py

    X = sp.csc_matrix(adata.X.T)  # 10x stores features x barcodes in CSC
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        m["data"], m["indices"], m["indptr"] = X.data.astype(np.int32), X.indices, X.indptr
        m["shape"] = np.array(X.shape, dtype=np.int32)
        feats = m.create_group("features")
        names = [n.replace("-", ":", 1) for n in adata.var_names]
        feats["id"] = np.array(names, dtype="S")
        feats["name"] = np.array(names, dtype="S")
        feats["feature_type"] = np.array(feature_types, dtype="S")
        feats["genome"] = np.array(["hg38"] * len(names), dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])


def test_read_cell_ranger_atac_h5_and_folder(tmp_path, peaks):
    small = peaks[:50, :40].copy()
    h5 = tmp_path / "filtered_peak_bc_matrix.h5"
    _write_10x_h5(h5, small, ["Peaks"] * small.n_vars)
    from scaml.atac.features import is_10x_peak_file

    assert is_10x_peak_file(h5)
    got = atac.read_peak_matrix(h5)
    assert got.shape == small.shape and got.var_names[0].startswith("chr") and ":" in got.var_names[0]
    np.testing.assert_array_equal(got.X.toarray(), small.X.toarray())
    arc = tmp_path / "arc.h5"
    _write_10x_h5(arc, small, ["Gene Expression"] * 10 + ["Peaks"] * (small.n_vars - 10))
    assert not is_10x_peak_file(arc)
    assert atac.read_peak_matrix(arc).n_vars == small.n_vars - 10
    folder = tmp_path / "filtered_peak_bc_matrix"
    folder.mkdir()
    import scipy.io

    scipy.io.mmwrite(str(folder / "matrix.mtx"), sp.coo_matrix(small.X.T))
    (folder / "barcodes.tsv").write_text("\n".join(small.obs_names) + "\n")
    coords = small.var[["chrom", "start", "end"]]
    coords.to_csv(folder / "peaks.bed", sep="\t", header=False, index=False)
    from_folder = atac.read_peak_matrix(folder)
    assert from_folder.shape == small.shape
    np.testing.assert_array_equal(from_folder.X.toarray(), small.X.toarray())


# ----------------------------------------------------------------------------- scaml integrate --modality atac

@pytest.fixture(scope="module")
def atac_run(tmp_path_factory, peaks):
    root = tmp_path_factory.mktemp("atac")
    path = root / "peaks.h5ad"
    peaks.write_h5ad(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = root / "out"
    code = main(["integrate", str(path), "--modality", "atac", "--batch-key", "batch", "--label-key", "cell_type",
                 "--out", str(out), "--n-pcs", "15", "--min-counts", "100", "--quiet"])
    return {"code": code, "out": out, "input": path, "digest": digest}


def test_integrate_atac_writes_lsi_and_harmony(atac_run):
    assert atac_run["code"] == 0
    assert hashlib.sha256(atac_run["input"].read_bytes()).hexdigest() == atac_run["digest"]
    adata = ad.read_h5ad(atac_run["out"] / "integrated.h5ad")
    for key in ("X_lsi", "X_lsi_harmony", "X_umap", "X_umap_uncorrected"):
        assert key in adata.obsm, key
    assert adata.obsm["X_lsi"].shape[1] == 15
    assert {"chrom", "start", "end"} <= set(adata.var.columns)
    run = json.loads((atac_run["out"] / "run.json").read_text())
    assert run["data"]["modality"] == "atac"
    assert run["data"]["lsi"]["depth_component_dropped"] == 1
    assert (atac_run["out"] / "figures" / "umap_integration_check.png").is_file()
    assert (atac_run["out"] / "figures" / "marker_dotplot.png").is_file()
    # the dot plot's cluster dendrogram is built on the corrected LSI, not on a PCA of every peak
    assert adata.uns["dendrogram_leiden"]["use_rep"] == "X_lsi_harmony"
    assert (atac_run["out"] / "report.html").is_file()


def test_integrate_atac_mixes_batches_and_keeps_types(atac_run):
    metrics = pd.read_csv(atac_run["out"] / "metrics.csv").set_index("embedding")
    assert metrics.loc["X_lsi_harmony", "ilisi"] > metrics.loc["X_lsi", "ilisi"] + 0.1
    assert metrics.loc["X_lsi_harmony", "ari"] > 0.6


def test_integrate_without_batch_key_corrects_nothing(tmp_path, peaks, capsys):
    out = tmp_path / "out"
    code = main(["integrate", "--adata", _write(tmp_path, peaks), "--out", str(out), "--n-pcs", "10",
                 "--min-counts", "100"])
    assert code == 0
    assert "nothing is corrected" in capsys.readouterr().err
    adata = ad.read_h5ad(out / "integrated.h5ad")
    assert "X_lsi" in adata.obsm and "X_lsi_harmony" not in adata.obsm and "harmony" not in adata.uns
    assert not (out / "metrics.csv").exists()
    assert (out / "figures" / "umap_clusters.png").is_file()


def _write(folder, adata) -> str:
    path = folder / "input.h5ad"
    adata.write_h5ad(path)
    return str(path)


def test_integrate_atac_refuses_non_counts(tmp_path, peaks, capsys):
    bad = peaks.copy()
    bad.X = bad.X * 0.5
    code = main(["integrate", _write(tmp_path, bad), "--modality", "atac", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "needs peak counts" in err[-1] and "not integers" in err[-1]


def test_integrate_atac_refuses_gene_names(tmp_path, peaks, capsys):
    genes = peaks.copy()
    genes.var_names = [f"GENE{i}" for i in range(genes.n_vars)]
    code = main(["integrate", _write(tmp_path, genes), "--modality", "atac", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "not peaks of the form chr-start-end" in capsys.readouterr().err


def test_integrate_atac_with_fragments_and_genes(tmp_path, peaks):
    small = peaks[::3].copy()
    rows = []
    for cell in small.obs_names[:150]:  # the last 50 cells have no fragments
        rows += [(small.var["chrom"].iloc[j], small.var["start"].iloc[j] + 10, small.var["start"].iloc[j] + 80,
                  cell, 1) for j in range(0, 60, 3)]
        rows.append(("chr1", 5, 60, cell, 1))  # outside every peak
    frag = tmp_path / "fragments.tsv.gz"
    _write_fragments(frag, rows)
    bed = tmp_path / "genes.bed"
    v = small.var
    bed.write_text("".join(f"{v['chrom'].iloc[j]}\t{v['start'].iloc[j] - 100}\t{v['end'].iloc[j] + 3000}\tG{j}\t0\t+\n"
                           for j in range(0, 300, 10)))
    out = tmp_path / "out"
    code = main(["integrate", _write(tmp_path, small), "--batch-key", "batch", "--out", str(out), "--n-pcs", "8",
                 "--min-counts", "50", "--fragments", str(frag), "--genes", str(bed), "--quiet"])
    assert code == 0
    adata = ad.read_h5ad(out / "integrated.h5ad")
    frip = adata.obs["frip"].to_numpy()
    has = adata.obs["n_fragments"].to_numpy() > 0
    np.testing.assert_allclose(frip[has], 20 / 21)
    assert "tss_enrichment" in adata.obs
    activity = ad.read_h5ad(out / "gene_activity.h5ad")
    assert activity.n_obs == adata.n_obs and activity.n_vars > 0 and "leiden" in activity.obs
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["fragments_qc"]["cells_with_fragments"] == 150
    assert run["data"]["gene_activity"]["n_genes_with_peaks"] == activity.n_vars
