"""scATAC-seq on real data: Signac's atac_small (LSI against Signac's own) and Granja et al. 2019 bone marrow.

The data are read from ../shared/data/atac (skipped when absent); the 100 fragments of atac_small cells
in tests/data come from Signac's repository (MIT, see tests/data/README.md).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
from conftest import shared_file

from scaml import atac

FRAGMENTS = Path(__file__).parent / "data" / "signac_atac_small_fragments.tsv.gz"


def test_lsi_matches_signacs_shipped_lsi(shared_data):
    """Signac's RunTFIDF + RunSVD on atac_small gave obsm['X_lsi']; ours gives the same components (up to sign)."""
    peaks = ad.read_h5ad(shared_file(shared_data, "atac", "signac_atac_small_peaks.h5ad"))
    shipped = peaks.obsm["X_lsi"]
    ours, _, _ = atac.lsi(atac.tfidf(peaks.X), 20, random_state=0)
    r = [abs(np.corrcoef(ours[:, i], shipped[:, i])[0, 1]) for i in range(10)]
    assert min(r) > 0.999, r
    check = atac.depth_check(ours, np.asarray(peaks.X.sum(axis=1)).ravel())
    assert check.dropped == [0] and abs(check.correlations[0]) > 0.75


def test_real_fragments_give_frip(shared_data):
    peaks = ad.read_h5ad(shared_file(shared_data, "atac", "signac_atac_small_peaks.h5ad"))
    atac.add_peak_coordinates(peaks)
    summary = atac.fragment_qc(peaks, FRAGMENTS)
    assert summary["n_fragments_read"] == 100 and summary["cells_with_fragments"] == 54
    assert int(peaks.obs["n_fragments"].sum()) == 100
    frip = peaks.obs["frip"].to_numpy()
    assert ((frip >= 0) & (frip <= 1)).all() and 0 < frip.max()


def test_granja_lsi_harmony_keeps_cell_types(shared_data):
    from scaml.pipeline import integrate

    path = shared_file(shared_data, "atac", "granja_bmmc_atac.h5ad")
    adata = integrate(path, "batch", label_key="cell_type", n_pcs=30,
                      atac_params={"min_counts": 10, "min_peaks": 10}, random_state=0)
    assert adata.uns["lsi"]["depth_component_dropped"] == 1
    assert {"X_lsi", "X_lsi_harmony"} <= set(adata.obsm)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(adata.obs["cell_type"], adata.obs["leiden"]) > 0.25
