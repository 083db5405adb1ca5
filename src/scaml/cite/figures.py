"""Protein figures of the integrate report: proteins on the UMAP and a protein x cluster dot plot.

:func:`protein_values` chooses what is drawn: the denoised proteins of a totalVI-like model
(``obsm["denoised_protein"]``, from the input or trained here with ``protein_model="totalvi"``) or,
without a model, the CLR of the raw counts; every figure title says which.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .._utils import info
from ..errors import ScamlError
from ..io import save_figure
from ..style import styled
from .io import PROTEIN_KEY, clr, get_protein_counts, protein_panels

PROTEIN_MODELS = ("clr", "totalvi")


def _short(name: str) -> str:
    """A protein name without the kit suffix, for axis labels (``CD3_TotalSeqB`` -> ``CD3``)."""
    for suffix in ("_TotalSeqB", "_TotalSeqA", "_TotalSeqC", "_TotalSeq", "-ADT", "_ADT"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def protein_values(adata: ad.AnnData, *, batch_key: str | None, protein_model: str = "clr",
                   protein_key: str = PROTEIN_KEY, random_state: int = 0,
                   max_epochs: int | None = None) -> dict[str, Any] | None:
    """The protein values of the report, written to ``adata.obsm``; a summary for run.json.

    Parameters
    ----------
    adata
        QC'd cells with raw protein counts in ``obsm[protein_key]`` (and raw RNA counts in
        ``layers["counts"]`` for ``protein_model="totalvi"``).
    batch_key
        The batch column (the totalVI condition; also where panels are checked).
    protein_model
        ``"clr"``: CLR per cell of the raw counts (``obsm["protein_clr"]``), unless the input
        already holds ``obsm["denoised_protein"]`` (then that is drawn); ``"totalvi"``: train
        :class:`scaml.vae.TOTALVI` on the RNA counts (highly variable genes) and proteins and
        write ``obsm["denoised_protein"]``, ``obsm["protein_foreground_probability"]`` and
        ``obsm["X_totalvi"]``.
    protein_key
        The obsm key of the protein counts.
    random_state, max_epochs
        Seed and epochs of the totalVI model (default: scaml.vae's rule).

    Returns
    -------
    dict or None
        ``{"kind", "key", "label", "n_proteins", "missing"}`` (None when there are no proteins).
    """
    if protein_key not in adata.obsm:
        return None
    if protein_model not in PROTEIN_MODELS:
        raise ScamlError(f"protein_model={protein_model!r} is not known; use one of {', '.join(PROTEIN_MODELS)}.")
    counts = get_protein_counts(adata, protein_key)
    batches = adata.obs[batch_key].astype(str).to_numpy() if batch_key else np.full(adata.n_obs, "all")
    panels = protein_panels(counts.counts, batches, counts.names, report=False)
    missing = {b: [counts.names[j] for j in np.flatnonzero(~p)] for b, p in panels.items() if (~p).any()}
    if protein_model == "totalvi":
        from ..vae import TOTALVI

        if batch_key is None:
            adata.obs["_scaml_one_batch"] = "all"
        key = batch_key or "_scaml_one_batch"
        counts_matrix = adata.layers["counts"] if "counts" in adata.layers else adata.X
        genes = adata.var["highly_variable"].to_numpy() if "highly_variable" in adata.var else np.ones(adata.n_vars, bool)
        cells = ad.AnnData(X=counts_matrix[:, genes], obs=adata.obs[[key]].copy(),
                           var=pd.DataFrame(index=adata.var_names[genes]))
        cells.obsm[protein_key] = pd.DataFrame(counts.counts, index=adata.obs_names, columns=counts.names)
        # one torch thread: the network is small, and more threads are much slower on a busy machine
        model = TOTALVI(cells, key, random_state=random_state).train(max_epochs=max_epochs, verbose=False,
                                                                     n_threads=1)
        denoised = model.get_normalized_protein()
        denoised.attrs = {}
        foreground = model.get_protein_foreground_probability()
        foreground.attrs = {}
        adata.obsm["denoised_protein"] = denoised
        adata.obsm["protein_foreground_probability"] = foreground
        adata.obsm["X_totalvi"] = model.get_latent()
        if batch_key is None:
            del adata.obs["_scaml_one_batch"]
        info(f"totalVI on {cells.n_vars} genes + {len(counts.names)} proteins: denoised proteins in "
             "obsm['denoised_protein'] (drawn in the protein figures)")
        kind, okey, label = "totalvi", "denoised_protein", "totalVI-denoised protein"
    elif "denoised_protein" in adata.obsm:
        kind, okey, label = "input", "denoised_protein", "denoised protein (the input's obsm['denoised_protein'])"
    else:
        values = clr(counts.counts)
        adata.obsm["protein_clr"] = pd.DataFrame(values, index=adata.obs_names, columns=counts.names)
        kind, okey, label = "clr", "protein_clr", "protein CLR of raw counts (no totalVI denoising)"
        info("protein figures show the CLR of the raw counts (no totalVI denoising; protein_model='totalvi' "
             "denoises them)")
    return {"kind": kind, "key": okey, "label": label, "n_proteins": len(counts.names), "missing": missing}


def _frame(adata: ad.AnnData, key: str) -> pd.DataFrame:
    value = adata.obsm[key]
    if isinstance(value, pd.DataFrame):
        return value
    names = adata.uns.get("protein_names")
    return pd.DataFrame(np.asarray(value), index=adata.obs_names,
                        columns=[str(n) for n in names] if names is not None else None)


@styled
def plot_protein_umaps(adata: ad.AnnData, summary: dict[str, Any], path: str | os.PathLike, *,
                       basis: str = "X_umap", max_proteins: int = 16, batch_key: str | None = None) -> Path:
    """A grid of UMAPs coloured by the report's protein values; cells of a batch that lacks a protein are grey."""
    from ..plotting import point_size

    values = _frame(adata, summary["key"])
    names = list(values.columns)[:max_proteins]
    ncols = min(4, max(len(names), 1))
    nrows = int(np.ceil(max(len(names), 1) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
    coords = adata.obsm[basis]
    batches = adata.obs[batch_key].astype(str).to_numpy() if batch_key else None
    for ax, name in zip(axes.ravel(), names, strict=False):
        v = values[name].to_numpy(dtype=float)
        if summary["kind"] != "clr":
            v = np.log1p(v)
        shown = np.ones(v.size, dtype=bool)
        if batches is not None and summary["kind"] == "clr":
            for b, lost in summary["missing"].items():
                if name in lost:
                    shown &= batches != b
        ax.scatter(coords[~shown, 0], coords[~shown, 1], c="#d0d0d0", s=point_size(v.size), linewidths=0,
                   rasterized=True)
        order = np.flatnonzero(shown)[np.argsort(v[shown])]
        sc = ax.scatter(coords[order, 0], coords[order, 1], c=v[order], cmap="viridis", s=point_size(v.size),
                        linewidths=0, rasterized=True)
        ax.set_title(_short(name) + ("" if shown.all() else " (grey: not on the panel)"), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        fig.colorbar(sc, ax=ax, shrink=0.75, label="CLR" if summary["kind"] == "clr" else "log1p(denoised)")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    more = f" (first {max_proteins} of {values.shape[1]})" if values.shape[1] > max_proteins else ""
    fig.suptitle(f"Proteins on the UMAP: {summary['label']}{more}", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)



@styled
def plot_protein_dotplot(adata: ad.AnnData, summary: dict[str, Any], path: str | os.PathLike, *,
                         groupby: str = "leiden", batch_key: str | None = None) -> Path:
    """Protein x cluster dot plot: colour the cluster mean (scaled 0-1 per protein), size the share of positive cells.

    Positive: foreground probability > 0.5 for a totalVI model, CLR > 0 otherwise (cells of batches
    that did not measure a protein are left out of its dots for CLR).
    """

    values = _frame(adata, summary["key"])
    clusters = adata.obs[groupby].astype(str)
    order = sorted(clusters.unique(), key=lambda c: (len(c), c))
    names = list(values.columns)
    v = values.to_numpy(dtype=float)
    if summary["kind"] != "clr":
        v = np.log1p(v)
    if "protein_foreground_probability" in adata.obsm and summary["kind"] != "clr":
        positive = _frame(adata, "protein_foreground_probability").to_numpy() > 0.5
        size_label = "share of cells with\nforeground prob. > 0.5"
    else:
        positive = v > 0
        size_label = "share of cells\nwith CLR > 0"
    valid = np.ones_like(v, dtype=bool)
    if batch_key and summary["kind"] == "clr":
        batches = adata.obs[batch_key].astype(str).to_numpy()
        for b, lost in summary["missing"].items():
            cols = [names.index(n) for n in lost if n in names]
            valid[np.ix_(batches == b, cols)] = False
    means = np.full((len(order), len(names)), np.nan)
    shares = np.zeros_like(means)
    for i, c in enumerate(order):
        rows = (clusters == c).to_numpy()
        for j in range(len(names)):
            ok = rows & valid[:, j]
            if ok.any():
                means[i, j] = v[ok, j].mean()
                shares[i, j] = positive[ok, j].mean()
    lo, hi = np.nanmin(means, axis=0), np.nanmax(means, axis=0)
    scaled = (means - lo) / np.where(hi > lo, hi - lo, 1.0)
    width = max(3.0, 0.42 * len(names))
    fig, (ax, cax, lax) = plt.subplots(
        1, 3, figsize=(width + 4.4, max(3.5, 0.36 * len(order) + 2.2)),
        gridspec_kw={"width_ratios": [width, 0.25, 2.6], "wspace": 0.6 / ((width + 2.85) / 3)},
    )
    yy, xx = np.meshgrid(np.arange(len(order)), np.arange(len(names)), indexing="ij")
    sc = ax.scatter(xx.ravel(), yy.ravel(), s=20 + 280 * shares.ravel(), c=scaled.ravel(), cmap="Reds",
                    vmin=0, vmax=1, edgecolors="#555555", linewidths=0.4)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels([_short(n) for n in names], rotation=90)
    ax.set_yticks(np.arange(len(order)))
    ax.set_yticklabels(order)
    ax.set_xlabel("protein")
    ax.set_ylabel(f"{groupby} cluster")
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_ylim(len(order) - 0.5, -0.5)
    fig.colorbar(sc, cax=cax, label="cluster mean (scaled 0-1 per protein)")
    handles = [lax.scatter([], [], s=20 + 280 * share, c="white", edgecolors="#555555") for share in (0.25, 0.5, 1.0)]
    lax.axis("off")
    lax.legend(handles, ["25%", "50%", "100%"], title=size_label, loc="center left", frameon=False, labelspacing=1.4, borderpad=1.5)
    ax.set_title(f"Proteins per cluster\n{summary['label']}", fontsize=11)
    return save_figure(fig, path)


def protein_figures(adata: ad.AnnData, summary: dict[str, Any] | None, figures: str | os.PathLike, *,
                    batch_key: str | None = None, groupby: str = "leiden", basis: str = "X_umap") -> list[Path]:
    """Write ``protein_umap.png`` and ``protein_dotplot.png`` into ``figures`` (nothing without proteins)."""
    if summary is None or summary["key"] not in adata.obsm or basis not in adata.obsm:
        return []
    figures = Path(figures)
    paths = [plot_protein_umaps(adata, summary, figures / "protein_umap.png", basis=basis, batch_key=batch_key)]
    if groupby in adata.obs.columns:
        paths.append(plot_protein_dotplot(adata, summary, figures / "protein_dotplot.png", groupby=groupby,
                                          batch_key=batch_key))
    return paths
