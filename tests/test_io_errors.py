"""Bad input gets one clear line and exit status 2; inputs are never modified; outputs are atomic."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from scaml.cli import main
from scaml.errors import ScamlError
from scaml.io import prepare_outdir, read_input, write_json


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def h5ad_file(tmp_path, small_counts) -> Path:
    path = tmp_path / "input.h5ad"
    small_counts.write_h5ad(path)
    return path


def _error_line(raw: str, command: str = "integrate") -> str:
    """The one error line of a failed command's raw stderr (info messages may precede it)."""
    errors = [line for line in raw.splitlines() if line.startswith(f"scaml {command}: error:")]
    assert len(errors) == 1, raw
    # nothing of the message spills onto further lines
    assert raw.rstrip("\n").endswith(errors[0]), raw
    return errors[0]


def _run(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI; return the exit status and the error line (or the raw stderr when it succeeded)."""
    code = main(list(argv))
    raw = capsys.readouterr().err
    return code, (_error_line(raw, argv[0]) if code == 2 else raw)


def test_misspelt_batch_key_lists_columns(capsys, tmp_path, h5ad_file):
    code, err = _run(capsys, "integrate", str(h5ad_file), "--batch-key", "Batch", "--out", str(tmp_path / "o"))
    assert code == 2
    assert err.startswith("scaml integrate: error: adata.obs has no key 'Batch'. Did you mean 'batch'?")
    assert "'batch'" in err and "'cell_type'" in err and "--batch-key" in err


def test_unexpected_exception_is_one_line_with_a_debug_hint(capsys, tmp_path, h5ad_file, monkeypatch):
    from scaml import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(pipeline, "integrate", broken)
    argv = ["integrate", str(h5ad_file), "--batch-key", "batch", "--out", str(tmp_path / "o")]
    code = main(argv)
    raw = capsys.readouterr().err
    assert code == 2
    line = _error_line(raw)
    assert "unexpected RuntimeError: boom second line" in line and "--debug" in line
    assert "Traceback" not in raw

    code = main([*argv, "--debug"])
    raw = capsys.readouterr().err
    assert code == 2
    assert "Traceback (most recent call last)" in raw and 'raise RuntimeError("boom' in raw
    assert "unexpected RuntimeError" in raw.splitlines()[-1]


def test_single_level_batch_key(capsys, tmp_path, small_counts):
    one = small_counts.copy()
    one.obs["batch"] = "only"
    path = tmp_path / "one.h5ad"
    one.write_h5ad(path)
    code, err = _run(capsys, "integrate", str(path), "--batch-key", "batch", "--out", str(tmp_path / "o"))
    assert code == 2 and "1 level" in err


def test_nan_in_embedding(capsys, tmp_path, small_counts):
    bad = small_counts.copy()
    emb = np.random.default_rng(0).normal(size=(bad.n_obs, 10)).astype(np.float32)
    emb[3, 2] = np.nan
    emb[7, 0] = np.inf
    bad.obsm["X_pca"] = emb
    path = tmp_path / "nan.h5ad"
    bad.write_h5ad(path)
    code, err = _run(capsys, "integrate", str(path), "--batch-key", "batch", "--use-rep", "X_pca",
                     "--out", str(tmp_path / "o"))
    assert code == 2 and "NaN or infinite" in err and "2 cells" in err


def test_truncated_h5ad(capsys, tmp_path, h5ad_file):
    data = h5ad_file.read_bytes()
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(data[: len(data) // 2])
    code, err = _run(capsys, "integrate", str(cut), "--batch-key", "batch", "--out", str(tmp_path / "o"))
    assert code == 2 and "cannot read h5ad" in err and "truncated" in err


def test_tiny_seuratdisk_like_h5ad(capsys, tmp_path, h5ad_file):
    tiny = tmp_path / "seurat.h5ad"
    tiny.write_bytes(h5ad_file.read_bytes()[:800])  # the size SeuratDisk leaves under Seurat v5
    code, err = _run(capsys, "integrate", str(tiny), "--batch-key", "batch", "--out", str(tmp_path / "o"))
    assert code == 2 and "SeuratDisk" in err and "anndata" in err


def test_counts_required_but_not_counts(capsys, tmp_path, small_counts):
    norm = small_counts.copy()
    norm.X = norm.X.multiply(1.0 / np.asarray(norm.X.sum(axis=1))).tocsr() * 1e4
    norm.X.data = np.log1p(norm.X.data)
    path = tmp_path / "norm.h5ad"
    norm.write_h5ad(path)
    code, err = _run(capsys, "integrate", str(path), "--batch-key", "batch", "--input-kind", "counts",
                     "--out", str(tmp_path / "o"))
    assert code == 2 and "counts are required" in err and "not integers" in err


def test_negative_values_refused(capsys, tmp_path, small_counts):
    neg = small_counts.copy()
    neg.X = neg.X.toarray() - 1.0
    path = tmp_path / "neg.h5ad"
    neg.write_h5ad(path)
    code, err = _run(capsys, "integrate", str(path), "--batch-key", "batch", "--out", str(tmp_path / "o"))
    assert code == 2 and "negative values" in err


def test_too_few_cells_for_pcs(capsys, tmp_path, small_counts):
    few = small_counts[np.random.default_rng(0).choice(small_counts.n_obs, 40, replace=False)].copy()
    path = tmp_path / "few.h5ad"
    few.write_h5ad(path)
    code, err = _run(capsys, "integrate", str(path), "--batch-key", "batch", "--n-pcs", "50",
                     "--min-genes", "10", "--out", str(tmp_path / "o"))
    assert code == 2 and "n_comps=50" in err and "--n-pcs" in err


def test_too_few_cells_for_clusters(capsys, tmp_path, small_counts):
    emb = np.random.default_rng(1).normal(size=(60, 5)).astype(np.float32)
    rows = np.random.default_rng(0).choice(small_counts.n_obs, 60, replace=False)
    few = ad.AnnData(X=small_counts.X[rows].copy(), obs=small_counts.obs.iloc[rows].copy(),
                     var=small_counts.var.copy())
    few.obsm["X_pca"] = emb
    path = tmp_path / "few.h5ad"
    few.write_h5ad(path)
    code, err = _run(capsys, "integrate", str(path), "--batch-key", "batch", "--use-rep", "X_pca",
                     "--nclust", "100", "--out", str(tmp_path / "o"))
    assert code == 2 and "100" in err and "60" in err


def test_existing_outdir_refused_without_overwrite(capsys, tmp_path, h5ad_file):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = _run(capsys, "integrate", str(h5ad_file), "--batch-key", "batch", "--out", str(out))
    assert code == 2 and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"


def test_overwrite_never_deletes_the_input(tmp_path, h5ad_file):
    with pytest.raises(ScamlError, match="contains the input"):
        prepare_outdir(tmp_path, overwrite=True, protect=[h5ad_file])
    assert h5ad_file.exists()


def test_missing_input_and_unknown_format(tmp_path):
    with pytest.raises(ScamlError, match="does not exist"):
        read_input(tmp_path / "nope.h5ad")
    other = tmp_path / "data.xyz"
    other.write_text("x")
    with pytest.raises(ScamlError, match="unknown input format"):
        read_input(other)


def test_read_csv_and_10x_dir(tmp_path, small_counts):
    import pandas as pd
    import scipy.io

    sub = small_counts[:20, :30]
    frame = pd.DataFrame(sub.X.toarray(), index=sub.obs_names, columns=sub.var_names)
    frame.to_csv(tmp_path / "counts.csv")
    from_csv = read_input(tmp_path / "counts.csv")
    assert from_csv.shape == (20, 30)
    np.testing.assert_allclose(from_csv.X.toarray(), sub.X.toarray())

    folder = tmp_path / "tenx"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sub.X.T.tocoo())
    pd.DataFrame({"id": sub.var_names, "name": sub.var_names, "type": "Gene Expression"}).to_csv(
        folder / "features.tsv", sep="\t", header=False, index=False)
    pd.Series(sub.obs_names).to_csv(folder / "barcodes.tsv", sep="\t", header=False, index=False)
    for name in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
        with open(folder / name, "rb") as src, gzip.open(folder / f"{name}.gz", "wb") as dst:
            dst.write(src.read())
        (folder / name).unlink()
    from_10x = read_input(folder)
    assert from_10x.shape == (20, 30)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    write_json({"a": np.float32(1.5), "b": float("nan")}, tmp_path / "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    assert '"b": null' in (tmp_path / "x.json").read_text()


def test_input_file_unchanged_after_errors(capsys, tmp_path, h5ad_file):
    before = _digest(h5ad_file)
    _run(capsys, "integrate", str(h5ad_file), "--batch-key", "nope", "--out", str(tmp_path / "o"))
    assert _digest(h5ad_file) == before


def test_write_h5ad_keeps_missing_labels_missing(tmp_path):
    import pandas as pd

    from scaml.io import write_h5ad

    adata = ad.AnnData(np.zeros((4, 2), np.float32))
    adata.obs["label"] = pd.Series(["B", np.nan, 3, "T"], index=adata.obs_names, dtype=object)
    write_h5ad(adata, tmp_path / "labels.h5ad")
    back = ad.read_h5ad(tmp_path / "labels.h5ad")
    assert back.obs["label"].isna().tolist() == [False, True, False, False]
    assert back.obs["label"].dropna().astype(str).tolist() == ["B", "3", "T"]
