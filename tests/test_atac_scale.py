"""`scaml integrate --modality atac` at a real size: >= 20,000 simulated cells, through the command line,
in memory (LSI, and the spectral embedding) and chunked (``--chunked``, the peak matrix read in 4,000-cell chunks;
LSI, and the spectral embedding on 8,000 landmarks extended by Nystrom).

Small peak panel and depth so that each run stays within about a minute on 2 cores; the assertions check that
the run finished, wrote its outputs, dropped the depth component and mixed the batches on data whose truth is
known, and that the chunked run gives the in-memory LSI, Harmony and clusters.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scaml.cli import main

pytestmark = pytest.mark.slow

N_CELLS = 20_500


def test_integrate_atac_at_20k_cells(tmp_path):
    from scaml.datasets import simulate_atac

    adata = simulate_atac(n_cells=N_CELLS, n_peaks=2000, n_batches=3, n_cell_types=6, mean_depth=300,
                          random_state=0)
    path = tmp_path / "peaks.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out"
    code = main(["integrate", str(path), "--modality", "atac", "--batch-key", "batch", "--label-key", "cell_type",
                 "--out", str(out), "--n-pcs", "20", "--min-counts", "50", "--resolutions", "0.5", "--quiet"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["after_qc"]["n_cells"] >= 20_000
    assert run["data"]["lsi"]["depth_component_dropped"] is not None
    result = ad.read_h5ad(out / "integrated.h5ad", backed="r")
    assert {"X_lsi", "X_lsi_harmony", "X_umap"} <= set(result.obsm.keys())
    metrics = pd.read_csv(out / "metrics.csv").set_index("embedding")
    assert metrics.loc["X_lsi_harmony", "ilisi"] > metrics.loc["X_lsi", "ilisi"]
    assert metrics.loc["X_lsi_harmony", "ari"] > 0.5

    # the chunked path on the same file: the same LSI (up to sign, fixed by svd_flip), Harmony and clusters
    from sklearn.metrics import adjusted_rand_score

    chunked_out = tmp_path / "chunked"
    code = main(["integrate", str(path), "--modality", "atac", "--batch-key", "batch", "--label-key", "cell_type",
                 "--out", str(chunked_out), "--n-pcs", "20", "--min-counts", "50", "--resolutions", "0.5",
                 "--chunked", "--chunk-cells", "4000", "--no-metrics", "--quiet"])
    assert code == 0
    chunked_run = json.loads((chunked_out / "run.json").read_text())
    assert chunked_run["data"]["chunked"]["n_chunks"] >= 5
    assert chunked_run["data"]["lsi"]["depth_check"] == run["data"]["lsi"]["depth_check"]
    chunked = ad.read_h5ad(chunked_out / "integrated.h5ad", backed="r")
    assert list(chunked.obs_names) == list(result.obs_names)
    for key in ("X_lsi", "X_lsi_harmony"):
        A, B = np.asarray(result.obsm[key]), np.asarray(chunked.obsm[key])
        assert min(np.corrcoef(A[:, i], B[:, i])[0, 1] for i in range(A.shape[1])) > 0.999, key
    assert adjusted_rand_score(result.obs["leiden"], chunked.obs["leiden"]) > 0.9

    # SnapATAC2's spectral embedding instead of LSI, at the same size
    spectral_out = tmp_path / "spectral"
    code = main(["integrate", str(path), "--modality", "atac", "--batch-key", "batch", "--out", str(spectral_out),
                 "--n-pcs", "20", "--min-counts", "50", "--resolutions", "0.5", "--atac-embedding", "spectral",
                 "--no-metrics", "--quiet"])
    assert code == 0
    spectral = ad.read_h5ad(spectral_out / "integrated.h5ad", backed="r")
    assert list(spectral.obs_names) == list(result.obs_names)
    assert {"X_spectral", "X_spectral_harmony"} <= set(spectral.obsm.keys())
    assert adjusted_rand_score(spectral.obs["cell_type"], spectral.obs["leiden"]) > 0.5

    # the chunked spectral embedding: 8,000 landmark cells, the other 12,500 extended by Nystrom
    nystrom_out = tmp_path / "spectral_chunked"
    code = main(["integrate", str(path), "--modality", "atac", "--batch-key", "batch", "--out", str(nystrom_out),
                 "--n-pcs", "20", "--min-counts", "50", "--resolutions", "0.5", "--atac-embedding", "spectral",
                 "--chunked", "--chunk-cells", "4000", "--landmarks", "8000", "--no-metrics", "--quiet"])
    assert code == 0
    nystrom = ad.read_h5ad(nystrom_out / "integrated.h5ad", backed="r")
    assert json.loads((nystrom_out / "run.json").read_text())["data"]["spectral"]["landmarks"] == 8000
    assert list(nystrom.obs_names) == list(spectral.obs_names)
    assert adjusted_rand_score(spectral.obs["leiden"], nystrom.obs["leiden"]) > 0.8
    assert adjusted_rand_score(nystrom.obs["cell_type"], nystrom.obs["leiden"]) > 0.5
