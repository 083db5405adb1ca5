"""``scaml train``, ``scaml learning-curve``, ``scaml novelty`` and ``scaml plot``: the classifier benchmark."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_input, add_output, resolve_input

_MODELS = ("lr", "rf", "xgb", "mlp")


def _common_data(p: argparse.ArgumentParser, *, label_required: bool = True, n_hvg: int = 3000) -> None:
    add_input(p, "input .h5ad (or 10x h5 / 10x folder / csv)", metavar="FILE")
    p.add_argument("--label-key", required=label_required, default=None, metavar="KEY",
                   help="obs column with the cell labels (e.g. label_ref)")
    p.add_argument("--features", choices=("hvg", "all"), default="hvg",
                   help="genes to train on: highly variable genes of the training cells (default) or all genes")
    p.add_argument("--n-hvg", type=int, default=n_hvg, metavar="N",
                   help=f"number of highly variable genes (default {n_hvg}; all genes, with a warning, when there are fewer)")
    p.add_argument("--embedding", default=None, metavar="KEY",
                   help="train on adata.obsm[KEY] (e.g. X_harmony, X_pca) instead of genes")
    p.add_argument("--random-state", type=int, default=0, metavar="SEED", help="seed of every model (default 0)")
    p.add_argument("--drop-missing-labels", action="store_true",
                   help="leave cells without a label out (default: refuse them)")
    p.add_argument("--param", nargs="+", default=None, metavar="MODEL.PARAM=VALUE",
                   help="override a hyperparameter, e.g. rf.n_estimators=100 mlp.hidden_layer_sizes='(128,)'")
    add_output(p, dest="outdir")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--no-plots", action="store_true", help="do not draw figures")


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Add the train, learning-curve, novelty and plot subcommands."""
    p = subparsers.add_parser(
        "train", parents=[parent],
        help="cross-batch classifier benchmark: train on some batches, test on others",
        description=(
            "Train LR / RF / XGBoost / MLP classifiers on cells of some levels of --split-key and test them on "
            "others. Features are chosen on the training cells only. Writes summary_metrics.json, classes.txt, "
            "features.txt and per model classification_report.txt, confusion_matrix.csv, predictions.csv, "
            "proba.csv, metrics.json, plus figures in DIR/plots."
        ),
    )
    _common_data(p)
    p.add_argument("--split-key", required=True, metavar="KEY", help="obs column whose levels split the cells (e.g. harvest)")
    p.add_argument("--split-train", nargs="+", default=None, metavar="LEVEL", help="level(s) to train on")
    p.add_argument("--split-test", nargs="+", default=None, metavar="LEVEL", help="level(s) to test on")
    p.add_argument("--models", nargs="+", default=list(_MODELS), choices=_MODELS, metavar="MODEL",
                   help="models to run: lr rf xgb mlp (default all)")
    p.add_argument("--reverse", action="store_true", help="also run test -> train (DIR/A_to_B and DIR/B_to_A)")
    p.add_argument("--cv", choices=("leave-one-group-out",), default=None,
                   help="hold out every level of --split-key in turn (per-fold folders and mean/sd)")
    p.add_argument("--class-weight", choices=("balanced",), default=None,
                   help="weight classes inversely to their frequency (sample weights for XGBoost and MLP)")
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "learning-curve", parents=[parent],
        help="test performance against training-set size, group-aware, with repeats",
        description=(
            "Draw training sets of growing size (stratified fractions within the training groups, or whole groups), "
            "repeat with fixed seeds, and evaluate on held-out groups. Without --split-test every group is held out "
            "in turn. Writes learning_curve.csv, learning_curve_summary.csv and learning_curve.png."
        ),
    )
    _common_data(p)
    p.add_argument("--group-key", required=True, metavar="KEY", help="obs column with the groups (e.g. culture)")
    p.add_argument("--model", choices=_MODELS, default="lr", help="model (default lr)")
    p.add_argument("--split-train", nargs="+", default=None, metavar="GROUP", help="training-pool groups")
    p.add_argument("--split-test", nargs="+", default=None, metavar="GROUP", help="held-out groups")
    p.add_argument("--sampling", choices=("fraction", "groups"), default="fraction",
                   help="grow by stratified fractions of the training groups (default) or by whole groups")
    p.add_argument("--sizes", nargs="+", type=float, default=None, metavar="S",
                   help="fractions (or cell counts > 1) for --sampling fraction; numbers of groups for --sampling groups")
    p.add_argument("--repeats", type=int, default=5, metavar="N", help="repeats per size (default 5)")
    p.add_argument("--class-weight", choices=("balanced",), default=None, help="balanced class weights")
    p.set_defaults(func=_learning_curve)

    p = subparsers.add_parser(
        "novelty", parents=[parent],
        help="detect foreign cells (e.g. HEK293) and cell types the others lack, with a detector fitted on the other cells",
        description=(
            "Fit a novelty detector on the cells that are not flagged, score every cell (cross-fitted, so no cell is "
            "scored by a model that saw it) and report AUROC / AUPRC against the flag. Writes novelty_scores.csv, "
            "novelty_metrics.json, novelty_histogram.png and novelty_curves.png. "
            "The default method, coverage, works on a PCA of all cells (--n-pcs, the flag not used), Harmony-"
            "corrected over --batch-key, and combines two scores by Fisher's method on their ranks: the mean "
            "cosine distance to the n_neighbors (30) nearest non-flagged cells of the other folds, and the query "
            "share, the fraction of query cells (the fold's non-flagged cells and every flagged cell) among a "
            "cell's share_neighbors (10) nearest cells. The distance finds foreign cells; the query share finds "
            "cell types the reference lacks even next to a type it has. Both are written to novelty_scores.csv "
            "(distance, query_share) and scored in novelty_metrics.json. Options: --param coverage.n_neighbors=30 "
            "coverage.share_neighbors=10 coverage.combine=fisher|mean|max coverage.metric=cosine|euclidean "
            "coverage.harmony=True coverage.harmony_theta=2."
        ),
    )
    _common_data(p, label_required=False, n_hvg=2000)
    p.add_argument("--hek-key", required=True, metavar="KEY", help="obs column flagging the foreign cells (e.g. is_hek)")
    p.add_argument("--hek-positive", default="true", metavar="VALUE", help="value marking a foreign cell (default true)")
    p.add_argument("--method", choices=("coverage", "knn", "iforest", "lof", "ocsvm", "classifier"), default="coverage",
                   help="detector (default coverage: distance to the nearest non-flagged cells combined with the share "
                        "of query cells among a cell's neighbours, in a Harmony-corrected PCA; knn: the distance "
                        "alone); classifier: 1 - max class probability (needs --label-key)")
    p.add_argument("--classifier", choices=_MODELS, default="lr", help="model for --method classifier (default lr)")
    p.add_argument("--n-pcs", type=int, default=30, metavar="N",
                   help="principal components for coverage/knn/iforest/lof/ocsvm (0: use the features directly; "
                        "default 30)")
    p.add_argument("--batch-key", default=None, metavar="KEY",
                   help="obs column of the batches Harmony corrects for --method coverage / knn (default: "
                        "obs['batch'] when it has several levels; --param coverage.harmony=False to turn it off)")
    p.add_argument("--hvg-cells", choices=("not-flagged", "all"), default="not-flagged",
                   help="choose HVGs on the non-flagged cells (default, strict) or on all cells (flag not used)")
    p.add_argument("--n-folds", type=int, default=5, metavar="K", help="cross-fitting folds (default 5)")
    p.set_defaults(func=_novelty)

    p = subparsers.add_parser(
        "plot", parents=[parent],
        help="figures of a 'scaml train' output directory",
        description=(
            "Draw model_compare.png and <model>_confusion_matrix.png (row-normalised) from a 'scaml train' "
            "directory, and for --reverse / --cv results a figure comparing directions or folds. Only these files "
            "are (re)written in --outdir."
        ),
    )
    add_input(p, "directory written by scaml train", flag="--results", metavar="DIR")
    add_output(p, "where to write the PNGs; default DIR/plots", required=False, dest="outdir")
    p.add_argument("--models", nargs="+", default=None, choices=_MODELS, metavar="MODEL", help="models to draw (default all)")
    p.set_defaults(func=_plot)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from ..classify.models import parse_param_overrides

    return parse_param_overrides(args.param)


def _train(args: argparse.Namespace) -> int:
    from ..classify import run_train
    from ..io import read_input

    path = resolve_input(args, "--adata", "FILE")
    overrides = _overrides(args)
    adata = read_input(path)
    run_train(
        adata, label_key=args.label_key, split_key=args.split_key, split_train=args.split_train,
        split_test=args.split_test, features=args.features, n_hvg=args.n_hvg, models=args.models,
        embedding=args.embedding, reverse=args.reverse, cv=args.cv, class_weight=args.class_weight,
        random_state=args.random_state, drop_missing_labels=args.drop_missing_labels, hyperparameters=overrides,
        outdir=args.outdir, overwrite=args.overwrite, plots=not args.no_plots, input_path=path,
    )
    return 0


def _learning_curve(args: argparse.Namespace) -> int:
    from ..classify import run_learning_curve
    from ..io import read_input

    path = resolve_input(args, "--adata", "FILE")
    overrides = _overrides(args)
    adata = read_input(path)
    run_learning_curve(
        adata, label_key=args.label_key, group_key=args.group_key, model=args.model, split_train=args.split_train,
        split_test=args.split_test, sizes=args.sizes, sampling=args.sampling, repeats=args.repeats,
        features=args.features, n_hvg=args.n_hvg, embedding=args.embedding, class_weight=args.class_weight,
        random_state=args.random_state, drop_missing_labels=args.drop_missing_labels, hyperparameters=overrides,
        outdir=args.outdir, overwrite=args.overwrite, plots=not args.no_plots, input_path=path,
    )
    return 0


def _novelty(args: argparse.Namespace) -> int:
    from ..classify import run_novelty
    from ..io import read_input

    path = resolve_input(args, "--adata", "FILE")
    overrides = _overrides(args)
    adata = read_input(path)
    run_novelty(
        adata, hek_key=args.hek_key, hek_positive=args.hek_positive, method=args.method, label_key=args.label_key,
        classifier=args.classifier, features=args.features, n_hvg=args.n_hvg, embedding=args.embedding,
        n_pcs=args.n_pcs, hvg_cells=args.hvg_cells, n_folds=args.n_folds, random_state=args.random_state,
        drop_missing_labels=args.drop_missing_labels, hyperparameters=overrides, batch_key=args.batch_key,
        outdir=args.outdir, overwrite=args.overwrite, plots=not args.no_plots, input_path=path,
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..classify import plot_results

    results = resolve_input(args, "--results", "DIR")
    if args.outdir is None:
        args.outdir = str(Path(results) / "plots")
    plot_results(results, args.outdir, models=args.models)
    return 0
