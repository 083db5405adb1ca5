"""``scaml reference build`` and ``scaml map``: reference mapping and label transfer."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_input, add_output, resolve_input

#: CLI destinations of the method options, and the option each one sets.
_BUILD_OPTIONS = {
    "max_epochs": "max_epochs", "n_latent": "n_latent", "hidden_layers": "hidden_layers",
    "gene_likelihood": "gene_likelihood", "beta": "beta", "unlabeled_category": "unlabeled_category",
    "batch_size": "batch_size", "device": "device", "threads": "n_threads", "n_comps": "n_comps",
    "theta": "theta", "n_samples_per_label": "n_samples_per_label", "protein_key": "protein_key",
    "contigs": "contigs", "tcr_layout": "tcr_layout", "clonotype_key": "clonotype_key", "tcr_weight": "tcr_weight",
}
_MAP_OPTIONS = {"threads": "n_threads", "contigs": "contigs", "tcr_layout": "tcr_layout"}
#: Where MVTCR finds the TCR chains (scaml.tcr.LAYOUTS).
_TCR_LAYOUTS = ["auto", "scaml", "airr", "airr-columns", "ir"]


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``reference`` (with ``build``) and ``map`` subcommands."""
    ref = subparsers.add_parser(
        "reference", parents=[parent],
        help="build a mapping reference (conditional VAE or Symphony-style Harmony reference)",
        description="Build a reference that query datasets can later be mapped onto with `scaml map`.",
    )
    ref_sub = ref.add_subparsers(dest="reference_command", metavar="SUBCOMMAND")
    b = ref_sub.add_parser(
        "build", parents=[parent],
        help="train a scVI/trVAE/scANVI-like model or build a Symphony reference; save it to a directory",
        description=(
            "Build a mapping reference from annotated cells. VAE methods (scvi, trvae, scanvi) train a "
            "conditional VAE on raw counts, peakvi / poissonvi one on scATAC-seq peak counts (all peaks), totalvi one on CITE-seq RNA + protein counts; symphony integrates the reference with scaml's Harmony and keeps "
            "what mapping needs. Writes REFDIR/reference.json, the model, the reference embedding and labels, "
            "REFDIR/run.json and REFDIR/report.html."
        ),
    )
    add_input(b, "reference cells: h5ad, 10x .h5, 10x matrix folder, or CSV/TSV (cells x genes)")
    b.add_argument("--method", choices=["scvi", "trvae", "scanvi", "peakvi", "poissonvi", "totalvi", "mvtcr",
                                         "symphony"],
                   default="scvi",
                   help="reference model (default scvi); each method uses the options that apply to it and "
                        "reports the others as unused")
    b.add_argument("--batch-key", required=True, metavar="KEY", help="obs column with the reference's batches")
    b.add_argument("--label-key", default=None, metavar="KEY",
                   help="obs column with cell labels to transfer (required for scanvi)")
    add_output(b, "reference directory to write", metavar="REFDIR")
    b.add_argument("--overwrite", action="store_true", help="replace an existing reference directory")
    b.add_argument("--n-hvg", type=int, default=2000,
                   help="highly variable genes the reference uses (default 2000; more than the data has: all "
                        "genes, with a warning; 0 = all genes for a VAE; peakvi / poissonvi use all peaks)")
    vae = b.add_argument_group("VAE methods (scvi, trvae, scanvi, peakvi, poissonvi, totalvi)")
    vae.add_argument("--max-epochs", type=int, default=None,
                     help="training epochs (default: min(400, 8e6 / n_cells), with early stopping)")
    vae.add_argument("--n-latent", type=int, default=None, help="latent dimensions (default 10)")
    vae.add_argument("--hidden-layers", type=int, nargs="+", default=None,
                     help="hidden layer widths (default 128 128)")
    vae.add_argument("--gene-likelihood", choices=["nb", "zinb", "mse"], default=None,
                     help="nb / zinb on raw counts, mse on normalised data (default nb)")
    vae.add_argument("--beta", type=float, default=None, help="trvae: weight of the MMD penalty (default 1)")
    vae.add_argument("--unlabeled-category", default=None,
                     help="scanvi: label value of unlabelled reference cells (default Unknown)")
    vae.add_argument("--n-samples-per-label", type=int, default=None, metavar="N",
                     help="scanvi: label-balanced classification loss on at most N cells of each label per "
                          "epoch (default: all labelled cells)")
    vae.add_argument("--protein-key", default=None, metavar="KEY",
                     help="totalvi: obsm key of the protein (antibody) counts (default protein_expression; a 10x "
                          "feature-barcoding .h5 / folder has its Antibody Capture features put there)")
    vae.add_argument("--batch-size", type=int, default=None, help="cells per mini-batch (default 128)")
    vae.add_argument("--device", default=None, help="auto, cpu or cuda (default auto; also Harmony's device for symphony)")
    vae.add_argument("--threads", type=int, default=None,
                     help="CPU threads for training (default: torch's; 1 is often fastest on a busy machine)")
    tcr = b.add_argument_group(
        "mvtcr (expression + TCR)",
        "mvtcr joins the expression with the alpha / beta CDR3s and V / J genes of each cell (cells may lack a "
        "chain) in one latent; the build also draws figures/tcr_latent_umap.png (by --label-key or Leiden "
        "clusters, and by expanded clonotype).")
    tcr.add_argument("--contigs", default=None, metavar="CSV",
                     help="a 10x filtered_contig_annotations.csv joined to the cells by barcode (productive chains, "
                          "the TRA and TRB contig with the most UMIs per barcode)")
    tcr.add_argument("--tcr-layout", choices=_TCR_LAYOUTS, default=None,
                     help="where the chains are in the cells: scirpy's obsm['airr'] (airr), scirpy.get.airr columns "
                          "VJ_1_junction_aa... (airr-columns), scirpy < 0.7 columns IR_VJ_1_cdr3... (ir), scaml's "
                          "tcr_alpha_cdr3... (scaml); default auto, the first found")
    tcr.add_argument("--clonotype-key", default=None, metavar="KEY",
                     help="obs column of the clonotypes (train / validation split by clonotype; default "
                          "clonotype_orig, clone_id or clonotype when present, else identical CDR3s)")
    tcr.add_argument("--tcr-weight", type=float, default=None,
                     help="weight of the TCR reconstruction against the expression likelihood (default 1)")
    sym = b.add_argument_group("symphony")
    sym.add_argument("--n-comps", type=int, default=None, help="principal components (default 30)")
    sym.add_argument("--theta", type=float, default=None, help="Harmony diversity penalty (default 2)")
    tune = b.add_argument_group(
        "hyperparameter tuning (VAE methods)",
        "--tune N searches n_latent, the depth and width of the hidden layers, the dropout rate, the learning "
        "rate and the KL weight with Optuna (seeded TPE; trial 1 is the defaults). Each trial trains on every "
        "reference batch but the largest, maps that batch as a query (surgery) and scores it: objective = "
        "0.6 x label-transfer accuracy + 0.4 x iLISI batch mixing. Needs --label-key and >= 2 batches; every "
        "trial and the final model train for --max-epochs (default: the rule for the whole reference), the "
        "trial's query for half of it. Options given (--n-latent, --hidden-layers) are fixed, not searched. The "
        "final model is trained on the whole reference with the best parameters; REFDIR/tuning/trials.csv and "
        "trials.png show the trials, run.json the settings and the best parameters.",
    )
    tune.add_argument("--tune", type=int, default=None, metavar="N",
                      help="tune the VAE's hyperparameters with N trials before building (not for symphony)")
    tune.add_argument("--tune-timeout", type=float, default=None, metavar="SECONDS",
                      help="with --tune: start no new trial after SECONDS (the running one finishes)")
    b.add_argument("--no-expression-classifier", action="store_true",
                   help="do not fit the CellTypist-style logistic regression on the reference's expression that a "
                        "labelled scvi / trvae / scanvi / symphony reference keeps by default (`scaml map` averages "
                        "its probabilities with the kNN's)")
    b.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    b.set_defaults(func=run_build)
    ref.set_defaults(func=_reference_help(ref))

    m = subparsers.add_parser(
        "map", parents=[parent],
        help="map a query onto a reference, transfer labels with uncertainty, draw a joint UMAP",
        description=(
            "Map query cells onto a reference built with `scaml reference build` (architecture surgery for VAE "
            "references, Symphony-style mapping otherwise), transfer the reference labels by weighted kNN (averaged "
            "with the reference's expression classifier when it keeps one) with a per-cell uncertainty and an "
            "'Unknown' call. Writes DIR/mapped.h5ad, DIR/predictions.csv, "
            "DIR/figures/joint_umap.png, DIR/metrics.json and DIR/confusion_matrix.csv (when --label-key), "
            "DIR/run.json and DIR/report.html."
        ),
    )
    m.add_argument("--reference", required=True, metavar="REFDIR", help="directory of `scaml reference build`")
    add_input(m, "query cells: h5ad, 10x .h5, 10x matrix folder, or CSV/TSV (also as --query INPUT)",
              extra_flags=("--query",))
    add_output(m)
    m.add_argument("--query-batch-key", default=None, metavar="KEY",
                   help="obs column with the query's batches (default: the reference's batch key if present, "
                        "else one batch)")
    m.add_argument("--label-key", default=None, metavar="KEY",
                   help="obs column with the query's true labels, to score the transfer")
    m.add_argument("--max-epochs", type=int, default=None, help="query training epochs (VAE references)")
    m.add_argument("--allow-existing-conditions", action="store_true",
                   help="accept query batch names that exist in the reference (treated as the same batch)")
    m.add_argument("--unknown-threshold", type=float, default=0.5,
                   help="uncertainty (1 - p(call)) above which a cell is called Unknown (default 0.5; 1 = never)")
    m.add_argument("--n-neighbors", default="auto", metavar="K|auto",
                   help="reference neighbours of the kNN label transfer (default auto: "
                        "clip(min(sqrt(N), m), 5, 50) with N labelled reference cells and m the cells of the "
                        "smallest label; or a whole number from 1 to N)")
    m.add_argument("--majority-voting", action="store_true",
                   help="also give every Leiden cluster of the query the most frequent call of its cells "
                        "(obs predicted_<label>_majority_voting; per-cell calls kept), as CellTypist does")
    m.add_argument("--majority-voting-resolution", type=float, default=None, metavar="RES",
                   help="Leiden resolution of the majority-voting clusters (default 5; higher = smaller clusters; implies --majority-voting)")
    m.add_argument("--contigs", default=None, metavar="CSV",
                   help="mvtcr references: the query's 10x filtered_contig_annotations.csv, joined by barcode")
    m.add_argument("--tcr-layout", choices=_TCR_LAYOUTS, default=None,
                   help="mvtcr references: where the query's TCR chains are (default auto; a query without "
                        "any is mapped by its expression)")
    m.add_argument("--threads", type=int, default=None,
                   help="CPU threads for query training (default: torch's; 1 is often fastest on a busy machine)")
    m.add_argument("--force", action="store_true", help="map even when the query holds < 50%% of the reference genes")
    m.add_argument("--no-umap", action="store_true", help="skip the joint UMAP")
    m.add_argument("--no-expression-classifier", action="store_true",
                   help="call labels from the kNN alone, even when the reference keeps an expression classifier "
                        "(default: the mean of the kNN's and the classifier's probabilities; both calls are kept "
                        "in obs predicted_<label>_knn / _lr)")
    at = m.add_argument_group(
        "scATAC-seq query onto an RNA reference (--modality atac)",
        "The ATAC cells' gene activity (peak counts, or fragments with --fragments, over each gene body + 2 kb "
        "upstream) is summed over each cell's --smooth-neighbors nearest ATAC cells (in the spectral embedding of "
        "their peaks, or LSI with --smooth-embedding lsi), scaled within the "
        "query and mapped onto the RNA reference (Symphony: projected on the loadings of the shared genes; VAEs: "
        "surgery); labels are transferred as for RNA, the label probabilities averaged over the same neighbours, and "
        "(Symphony) obs mapping_confidence flags cells that point "
        "at no single reference type. Writes DIR/gene_activity.h5ad too.",
    )
    at.add_argument("--modality", choices=["rna", "atac"], default=None,
                    help="atac: the query is scATAC-seq peaks, mapped through their gene activity (default: as is)")
    at.add_argument("--genes", default=None, metavar="GTF_GFF_BED",
                    help="gene annotation of the peaks' genome, genes named as in the reference (needed for atac)")
    at.add_argument("--fragments", default=None, metavar="FILE",
                    help="fragments.tsv.gz of the query cells: gene activity counts fragments instead of peaks")
    at.add_argument("--smooth-neighbors", type=int, default=None, metavar="K",
                    help="ATAC neighbours whose activity is added to each cell's (default 20; 0 = none)")
    at.add_argument("--smooth-embedding", choices=["spectral", "lsi"], default=None,
                    help="embedding of the ATAC neighbours: SnapATAC2's spectral (default) or Signac's LSI")
    at.add_argument("--no-neighbour-vote", action="store_true",
                    help="call each ATAC cell on its own (default: its label probabilities averaged over its "
                         "--smooth-neighbors ATAC neighbours)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    m.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    m.set_defaults(func=run_map)


def _reference_help(parser: argparse.ArgumentParser):
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    return show


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """The method options the user set (None: not given; the method's own default applies)."""
    options = {option: getattr(args, dest) for dest, option in names.items() if getattr(args, dest) is not None}
    if "hidden_layers" in options:
        options["hidden_layers"] = tuple(options["hidden_layers"])
    return options


def run_build(args: argparse.Namespace) -> int:
    """Run :func:`scaml.mapping.build_reference` with the parsed arguments.

    The options the user set are passed as they are; the method decides which apply.
    """
    from ..mapping import build_reference

    if args.tune is not None or args.tune_timeout is not None:
        return _run_tune(args)
    build_reference(
        resolve_input(args), args.method, args.batch_key, args.label_key, args.out, overwrite=args.overwrite,
        random_state=args.random_state, n_hvg=args.n_hvg or None,
        expression_classifier=False if args.no_expression_classifier else None, **_given(args, _BUILD_OPTIONS),
    )
    return 0


def _run_tune(args: argparse.Namespace) -> int:
    """``reference build --tune N``: :func:`scaml.mapping.tune.tune_reference` with the parsed arguments."""
    from ..errors import ScamlError
    from ..mapping.tune import tune_reference

    if args.tune is None:
        raise ScamlError("--tune-timeout limits a search: give the number of trials with --tune N as well.")
    tune_reference(
        resolve_input(args), args.method, args.batch_key, args.label_key, args.out, args.tune,
        timeout=args.tune_timeout, overwrite=args.overwrite, random_state=args.random_state,
        n_hvg=args.n_hvg or None, expression_classifier=False if args.no_expression_classifier else None,
        **_given(args, _BUILD_OPTIONS),
    )
    return 0


def run_map(args: argparse.Namespace) -> int:
    """Run :func:`scaml.mapping.map_query` with the parsed arguments."""
    from ..mapping import map_query

    map_query(
        args.reference, resolve_input(args, "--query"), args.out, query_batch_key=args.query_batch_key,
        label_key=args.label_key, overwrite=args.overwrite, max_epochs=args.max_epochs,
        allow_existing_conditions=args.allow_existing_conditions, random_state=args.random_state,
        unknown_threshold=args.unknown_threshold, n_neighbors=args.n_neighbors, force=args.force,
        train_params=_given(args, _MAP_OPTIONS), umap=not args.no_umap,
        expression_classifier=not args.no_expression_classifier,
        modality=args.modality, genes=args.genes, fragments=args.fragments,
        atac_options={key: value for key, value in (("smooth_neighbors", args.smooth_neighbors),
                                                    ("graph_embedding", args.smooth_embedding),
                                                    ("neighbour_vote", False if args.no_neighbour_vote else None))
                      if value is not None} or None,
        majority_voting=args.majority_voting or args.majority_voting_resolution is not None,
        **({"majority_voting_resolution": args.majority_voting_resolution}
           if args.majority_voting_resolution is not None else {}),
    )
    return 0
