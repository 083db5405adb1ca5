"""RNA -> ATAC label transfer through gene activity (``scaml map --modality atac``) on Granja bone marrow.

The RNA reference is ``../shared/data/atac/granja_bmmc_rna.h5ad`` (300 cells of donor D1: 01_HSC, 17_B,
19_CD8.N); the query is ``granja_bmmc_atac.h5ad`` (600 cells of donors D5 / D6, 5000 random 501-bp peaks,
six types: the three above and 05_CMP.LMPP, 07_GMP, 15_CLP.2, which the reference lacks). Gene activity
uses the hg19 genes of ``tests/data/archr_hg19_genes.bed.gz`` (ArchR's geneAnnoHg19, MIT), gene body +
2 kb upstream, from the peak counts (the set ships no fragments).

Scored for each method: accuracy on the cells of the three shared types (an Unknown call is a miss), the
same among the cells called, and for the three absent types the fraction called Unknown (weighted-kNN
uncertainty > 0.5) and the fraction flagged uncertain (Unknown, or ATAC mapping confidence < 0.5); the
shared types' flagged fraction is the price. Methods:

- ``symphony`` references (2000 HVGs, and all 4466 genes) with the default ATAC mapping (activity summed
  over each cell's 20 nearest ATAC cells in its spectral embedding, scaled within the query, projected on
  the shared genes' loadings, Symphony's correction; the per-label probabilities averaged over the same
  ATAC neighbours before the call), without that vote, with the neighbours found in the LSI instead (with
  and without the vote; LSI without the vote was the default before), and with no smoothing;
- the naive path: the gene activity mapped as an RNA query (scaled with the reference's gene means);
- an ``scvi`` reference (all genes) with the smoothed activity counts as the surgery query;
- ``+ expression classifier``: the default calls with the reference's expression classifier (fitted on the
  RNA cells' expression, :mod:`scaml.mapping.expression_classifier`) applied to the smoothed activity and
  averaged in, as an RNA query is called (``scaml map`` leaves it out for ATAC queries; this row is why).

Usage::

    python benchmarks/bench_atac_transfer.py
    python benchmarks/bench_atac_transfer.py --no-scvi --max-epochs 200
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCAML_SHARED_DATA", ROOT.parent / "shared" / "data"))
ANNOTATION = ROOT / "tests" / "data" / "archr_hg19_genes.bed.gz"
SHARED_TYPES = ("01_HSC", "17_B", "19_CD8.N")


def _quiet(func, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return func(*args, **kwargs)


def score(truth: np.ndarray, called: np.ndarray, confidence: np.ndarray | None) -> dict[str, float]:
    """Accuracy on the shared types and the Unknown / uncertain fractions of the absent ones."""
    shared = np.isin(truth, SHARED_TYPES)
    unknown = called == "Unknown"
    flagged = unknown | (confidence < 0.5 if confidence is not None else False)
    right = called == truth
    return {
        "acc_shared": float(right[shared].mean()),
        "acc_shared_called": float(right[shared & ~unknown].sum() / max((shared & ~unknown).sum(), 1)),
        "unknown_absent": float(unknown[~shared].mean()),
        "uncertain_absent": float(flagged[~shared].mean()),
        "uncertain_shared": float(flagged[shared].mean()),
    }


def data_summary(rna, atac) -> None:
    """How much gene activity the 5000 random peaks give."""
    from scaml.atac import gene_activity

    ga = gene_activity(atac, str(ANNOTATION), layer=None)
    shared = ga.var_names.intersection(rna.var_names)
    detected = shared[np.asarray(rna[:, shared].X.sum(axis=0)).ravel() > 0]
    per_cell = np.asarray(ga[:, shared].X.sum(axis=1)).ravel()
    peaks_in_genes = int((np.asarray(ga.X.sum(axis=0)).ravel() > 0).sum())
    print(f"annotation: {ga.uns['gene_activity']['n_genes_annotated']} genes; {ga.n_vars} have activity "
          f"(>= 1 of the 5000 peaks in gene body + 2 kb; {peaks_in_genes} with counts); {len(shared)} of them are "
          f"among the RNA set's {rna.n_vars} genes, {len(detected)} detected in the RNA cells")
    print(f"activity counts per ATAC cell on those {len(shared)} genes: median {np.median(per_cell):g}, "
          f"quartiles {np.quantile(per_cell, 0.25):g}-{np.quantile(per_cell, 0.75):g}, max {per_cell.max():g}, "
          f"{int((per_cell == 0).sum())} cells with none")


def with_classifier(refdir: Path, rna, atac, mapped) -> np.ndarray:
    """The default ATAC calls with the reference's expression classifier on the smoothed activity averaged in."""
    from scaml.mapping.atac_query import prepare_atac_query
    from scaml.mapping.expression_classifier import CLASSIFIER_DIR, ExpressionClassifier
    from scaml.mapping.refdir import open_reference
    from scaml.mapping.transfer import transfer_labels

    query = _quiet(prepare_atac_query, atac, list(rna.var_names), str(ANNOTATION), random_state=0)
    probabilities = ExpressionClassifier.load(refdir / CLASSIFIER_DIR).predict_proba(query.aligned)
    probabilities.index = mapped.obs_names
    ref_latent, ref_obs = open_reference(refdir, ["symphony"]).cells()
    calls = transfer_labels(ref_latent, ref_obs["label"].to_numpy(dtype=object), mapped.obsm["X_scaml_latent"],
                            vote_neighbors=query.neighbors, classifier_probabilities=probabilities,
                            query_index=mapped.obs_names)
    return calls["label"].astype(str).to_numpy()


def run(args: argparse.Namespace) -> pd.DataFrame:
    import anndata as ad

    from scaml.mapping import build_reference, map_query

    rna = ad.read_h5ad(SHARED / "atac" / "granja_bmmc_rna.h5ad")
    atac = ad.read_h5ad(SHARED / "atac" / "granja_bmmc_atac.h5ad")
    truth = atac.obs["cell_type"].astype(str).to_numpy()
    data_summary(rna, atac)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        refs = {"symphony 2000 HVG": ("symphony", 2000, {}), "symphony all genes": ("symphony", rna.n_vars, {})}
        if not args.no_scvi:
            refs["scvi all genes"] = ("scvi", rna.n_vars, {"max_epochs": args.max_epochs})
        for name, (method, n_hvg, extra) in refs.items():
            refdir = tmp / name.replace(" ", "_")
            t0 = time.perf_counter()
            _quiet(build_reference, rna, method, "batch", "cell_type", refdir, n_hvg=n_hvg, random_state=0, **extra)
            t_build = time.perf_counter() - t0
            variants = [("smooth 20 + vote", {})]
            if method == "symphony":
                variants += [("smooth 20, no vote", {"neighbour_vote": False}),
                             ("LSI graph + vote", {"graph_embedding": "lsi"}),
                             ("LSI graph, no vote", {"graph_embedding": "lsi", "neighbour_vote": False}),
                             ("smooth 0", {"smooth_neighbors": 0})]
            for variant, options in variants:
                out = tmp / f"{refdir.name}_{variant.replace(' ', '')}"
                t0 = time.perf_counter()
                mapped = _quiet(map_query, refdir, atac, out, modality="atac", genes=str(ANNOTATION),
                                label_key="cell_type", umap=False, atac_options=options or None, random_state=0,
                                **({"max_epochs": args.max_epochs} if method == "scvi" else {}))
                seconds = time.perf_counter() - t0
                conf = mapped.obs["mapping_confidence"].to_numpy() if "mapping_confidence" in mapped.obs else None
                called = mapped.obs["predicted_cell_type"].astype(str).to_numpy()
                rows.append({"reference": name, "query": variant, "build_s": t_build, "map_s": seconds,
                             **score(truth, called, conf)})
                if variant == "smooth 20 + vote" and method == "symphony":
                    rows.append({"reference": name, "query": "smooth 20 + vote + expression classifier",
                                 "build_s": t_build, "map_s": np.nan,
                                 **score(truth, with_classifier(refdir, rna, atac, mapped), None)})
                if name == "symphony all genes" and variant == "smooth 20 + vote":
                    flag = np.where(conf < 0.5, " (confidence < 0.5)", "")
                    confusion = pd.crosstab(pd.Series(truth, name="true"),
                                            pd.Series(np.char.add(called.astype(str), flag), name="called"))
            if method == "symphony":
                # naive: the gene activity as an RNA query (reference means / sds, missing genes zero)
                from scaml.atac import gene_activity

                ga = _quiet(gene_activity, atac, str(ANNOTATION), layer=None)
                t0 = time.perf_counter()
                mapped = _quiet(map_query, refdir, ga, tmp / f"{refdir.name}_naive", label_key="cell_type",
                                umap=False, force=True, random_state=0)
                rows.append({"reference": name, "query": "naive (activity as RNA)", "build_s": t_build,
                             "map_s": time.perf_counter() - t0,
                             **score(truth, mapped.obs["predicted_cell_type"].astype(str).to_numpy(), None)})
    print(f"calls of 'symphony all genes, smooth 20 + vote' by true type:\n{confusion.to_string()}\n")
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-scvi", action="store_true", help="skip the scVI reference")
    parser.add_argument("--max-epochs", type=int, default=200, help="scVI reference and query epochs (default 200)")
    args = parser.parse_args()
    if not (SHARED / "atac" / "granja_bmmc_atac.h5ad").exists():
        print(f"skipped: {SHARED / 'atac'} not found")
        return
    print(f"threads: {THREADS}")
    table = run(args)
    print(table.set_index(["reference", "query"]).round(3).to_string())


if __name__ == "__main__":
    main()
