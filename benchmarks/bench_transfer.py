"""Label-transfer settings on real held-out splits: k, the Unknown threshold and majority voting.

Maps each query with scaml's Symphony-style method (``build_reference(..., "symphony", ...)`` and
``map_query``: no training, deterministic) once per split, then re-runs the weighted kNN label
transfer (:func:`scaml.mapping.transfer.transfer_labels`) in the shared embedding with every
combination of

- k: 5, 10, 15, 30, 50 and ``auto`` (the rule of :func:`scaml.mapping.transfer.auto_n_neighbors`;
  the k it chose is printed next to it);
- the Unknown threshold: 0.3 ... 0.9, and none (1.0, never Unknown);
- majority voting over the query's own Leiden clusters: off, or on at each ``--resolutions`` value;
- the labels: the kNN alone, or ``kNN + LR`` (``map``'s default for a reference that keeps an expression
  classifier: the mean of the kNN's and the classifier's probabilities,
  :mod:`scaml.mapping.expression_classifier`).

and prints accuracy, macro F1 (an Unknown call counts as a miss of the cell's true class), the
percentage of cells called Unknown and the accuracy of the cells not called Unknown (``acc_called``:
what the threshold gains), per split, then the mean over the panc8 splits.

Splits (real data in ``../shared/data/h5ad`` relative to the repository root; see
``../shared/data/README.md``):

- kang_ifnb1k: CTRL cells as the reference, STIM cells as the query (IFN-beta perturbed);
- panc8_small: each of the 5 technologies held out as the query in turn, the other 4 as the reference.

Batch key ``batch``, label key ``cell_type``. Usage::

    python benchmarks/bench_transfer.py
    python benchmarks/bench_transfer.py --splits kang --resolutions 1 2 5 --csv transfer.csv
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, THREADS)

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "h5ad"
K_VALUES: tuple[int | str, ...] = (5, 10, 15, 30, 50, "auto")
THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PANC8_TECHS = ("celseq", "celseq2", "fluidigmc1", "indrop", "smartseq2")


def _splits(names: list[str]):
    """Yield (name, reference AnnData, query AnnData) for the requested splits."""
    import anndata as ad

    if "kang" in names:
        kang = ad.read_h5ad(DATA / "kang_ifnb1k.h5ad")
        yield ("kang STIM", kang[kang.obs["batch"] == "CTRL"].copy(), kang[kang.obs["batch"] == "STIM"].copy())
    if "panc8" in names:
        panc8 = ad.read_h5ad(DATA / "panc8_small.h5ad")
        for tech in PANC8_TECHS:
            held = (panc8.obs["batch"] == tech).to_numpy()
            yield (f"panc8 {tech}", panc8[~held].copy(), panc8[held].copy())


def _embed(ref, query, workdir: Path, seed: int):
    """Symphony reference + mapping; the reference and query embeddings and labels, and the reference's
    expression-classifier probabilities of the query cells."""
    from scaml.mapping import LATENT_KEY, METHODS, build_reference, map_query
    from scaml.mapping.expression_classifier import CLASSIFIER_DIR, ExpressionClassifier
    from scaml.mapping.refdir import open_reference

    start = time.perf_counter()
    ref_dir = build_reference(ref, "symphony", "batch", "cell_type", workdir / "ref", random_state=seed)
    mapped = map_query(ref_dir, query, workdir / "map", label_key="cell_type", unknown_threshold=1.0,
                       random_state=seed, umap=False)
    ref_latent, ref_obs = open_reference(ref_dir, METHODS).cells()
    classifier = ExpressionClassifier.load(ref_dir / CLASSIFIER_DIR).predict_proba(query)
    seconds = time.perf_counter() - start
    return (ref_latent, ref_obs["label"].astype(str).to_numpy(), mapped.obsm[LATENT_KEY],
            mapped.obs["cell_type"].astype(str).to_numpy(), classifier, seconds)


def _sweep(name: str, ref_latent, ref_labels, query_latent, true, classifier, resolutions: list[float],
           seed: int) -> list[dict]:
    from scaml.mapping.transfer import query_clusters

    clusters = {res: query_clusters(query_latent, resolution=res, random_state=seed) for res in resolutions}
    rows = []
    for source, probabilities in (("kNN", None), ("kNN + LR", classifier)):
        rows += _grid(name, source, probabilities, ref_latent, ref_labels, query_latent, true, clusters, seed)
    return rows


def _grid(name: str, source: str, probabilities, ref_latent, ref_labels, query_latent, true, clusters: dict,
          seed: int) -> list[dict]:
    import numpy as np

    from scaml.mapping.scoring import label_metrics
    from scaml.mapping.transfer import transfer_labels

    rows = []
    for k in K_VALUES:
        for threshold in THRESHOLDS:
            for res in [None, *clusters]:
                calls = transfer_labels(ref_latent, ref_labels, query_latent, n_neighbors=k, threshold=threshold,
                                        clusters=None if res is None else clusters[res], random_state=seed,
                                        classifier_probabilities=probabilities)
                predicted = calls["label" if res is None else "majority_voting"].astype(str).to_numpy()
                m = label_metrics(true, predicted)
                called = predicted != "Unknown"
                rows.append({
                    "split": name, "labels": source, "k": str(k), "k_used": int(calls.attrs["n_neighbors"]),
                    "threshold": "none" if threshold >= 1.0 else f"{threshold:g}",
                    "majority_voting": "off" if res is None else f"res {res:g} ({len(set(clusters[res]))} cl.)",
                    "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                    "pct_unknown": round(100.0 * float(np.mean(~called)), 1),
                    "acc_called": round(float(np.mean(predicted[called] == true[called])), 4) if called.any() else "-",
                    "n_ref": len(ref_labels), "n_query": len(true),
                    "smallest_class": int(calls.attrs["smallest_class"]),
                })
    return rows


def _table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def _mean_over(rows: list[dict], prefix: str) -> list[dict]:
    """Mean accuracy / macro F1 / % Unknown over the splits whose name starts with ``prefix``."""
    import pandas as pd

    frame = pd.DataFrame([r for r in rows if r["split"].startswith(prefix)])
    if frame.empty:
        return []
    keys = ["labels", "k", "threshold", "majority_voting"]
    mv = frame["majority_voting"].str.replace(r" \(.*\)", "", regex=True)
    frame = frame.assign(majority_voting=mv)
    out = frame.groupby(keys, sort=False).agg(
        k_used=("k_used", lambda s: "/".join(str(v) for v in s)), accuracy=("accuracy", "mean"),
        macro_f1=("macro_f1", "mean"), pct_unknown=("pct_unknown", "mean"),
        acc_called=("acc_called", lambda s: pd.to_numeric(s, errors="coerce").mean())).reset_index()
    out["split"] = f"{prefix} (mean of {frame['split'].nunique()})"
    for col, digits in (("accuracy", 3), ("macro_f1", 3), ("pct_unknown", 1), ("acc_called", 3)):
        out[col] = out[col].round(digits)
    return out.to_dict("records")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", choices=["kang", "panc8"], default=["kang", "panc8"])
    parser.add_argument("--resolutions", nargs="+", type=float, default=[5.0],
                        help="Leiden resolutions of majority voting (default 5, scaml's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default=None, help="write every row to this CSV file")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"bench_transfer: the real data folder ../shared/data/h5ad (relative to the repository root, "
              f"here {DATA}) is absent; it needs kang_ifnb1k.h5ad and panc8_small.h5ad (see "
              "../shared/data/README.md). Nothing was run.", file=sys.stderr)
        return 2

    import pandas as pd

    from scaml._utils import set_quiet

    set_quiet(True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, ref, query) in enumerate(_splits(args.splits)):
            ref_latent, ref_labels, query_latent, true, classifier, seconds = _embed(ref, query, Path(tmp) / str(i),
                                                                                     args.seed)
            print(f"{name}: reference {ref.n_obs} cells, query {query.n_obs} cells, mapped in {seconds:.1f} s",
                  flush=True)
            rows += _sweep(name, ref_latent, ref_labels, query_latent, true, classifier, args.resolutions,
                           args.seed)
    columns = ["split", "labels", "k", "k_used", "threshold", "majority_voting", "accuracy", "macro_f1", "pct_unknown",
               "acc_called"]
    print(_table(rows, columns))
    summary = _mean_over(rows, "panc8")
    if summary:
        print()
        print(_table(summary, columns))
    if args.csv:
        pd.DataFrame(rows + summary).to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
