"""The reference-directory format: one versioned writer and reader.

A reference directory (written by :func:`scaml.mapping.build_reference`) holds:

- ``reference.json``: the manifest (kind, format version, method, keys, sizes, scaml version);
- the model sub-directory named by the manifest's ``model_dir`` (``model/`` for the VAEs,
  ``symphony/`` for a Symphony reference);
- ``reference_latent.npz``: the reference cells' embedding (``latent``) and names (``cells``);
- ``reference_obs.csv``: their batch and (when built with labels) label;
- ``run.json``, ``report.html`` and figures.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import ScamlError
from ..io import write_csv, write_json, write_npz
from ..manifest import manifest_header, read_manifest

MANIFEST_FILE = "reference.json"
REFERENCE_KIND = "scaml-reference"
REFERENCE_FORMAT_VERSION = 1
LATENT_FILE = "reference_latent.npz"
OBS_FILE = "reference_obs.csv"

_REBUILD = "Rebuild the reference with this version of scaml (`scaml reference build`)."


@dataclass
class ReferenceDir:
    """An opened reference directory: its path and checked manifest.

    Attributes
    ----------
    path
        The directory.
    manifest
        The contents of ``reference.json``.
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def method(self) -> str:
        """The method that built the reference."""
        return str(self.manifest["method"])

    @property
    def model_dir(self) -> Path:
        """The model sub-directory."""
        return self.path / self.manifest["model_dir"]

    @property
    def batch_key(self) -> str:
        """The reference's batch column."""
        return str(self.manifest["batch_key"])

    @property
    def label_key(self) -> str | None:
        """The reference's label column (None when built without labels)."""
        return self.manifest.get("label_key")

    @property
    def conditions(self) -> list[str]:
        """The reference's batches."""
        return [str(c) for c in self.manifest.get("conditions") or []]

    def cells(self) -> tuple[np.ndarray, pd.DataFrame]:
        """The reference cells' embedding (float32) and their ``batch`` / ``label`` table.

        Raises
        ------
        ScamlError
            The two files disagree.
        """
        with np.load(self.path / LATENT_FILE, allow_pickle=False) as npz:
            latent = np.asarray(npz["latent"], dtype=np.float32)
            cells = npz["cells"].astype(str)
        obs = pd.read_csv(self.path / OBS_FILE, index_col=0, dtype=str, keep_default_na=False, na_values=[""])
        if len(obs) != latent.shape[0] or not np.array_equal(obs.index.to_numpy(dtype=str), cells):
            raise ScamlError(
                f"{LATENT_FILE} and {OBS_FILE} in {str(self.path)!r} disagree; the reference is corrupt. Rebuild it."
            )
        return latent, obs


def open_reference(reference_dir: str | os.PathLike, methods: Iterable[str]) -> ReferenceDir:
    """Open and check a reference directory.

    Parameters
    ----------
    reference_dir
        The directory written by :func:`scaml.mapping.build_reference`.
    methods
        The method names this scaml knows.

    Returns
    -------
    ReferenceDir

    Raises
    ------
    ScamlError
        The directory does not exist, is not a scaml reference, was written by an incompatible
        version, names an unknown method, or lacks one of its files.
    """
    path = Path(reference_dir)
    if not path.is_dir():
        raise ScamlError(
            f"reference directory {str(path)!r} does not exist; build one with `scaml reference build` "
            "and pass its --out directory to --reference."
        )
    if not (path / MANIFEST_FILE).is_file():
        raise ScamlError(
            f"{str(path)!r} is not a scaml reference directory (no {MANIFEST_FILE}); pass the --out directory "
            "of `scaml reference build`."
        )
    manifest = read_manifest(path / MANIFEST_FILE, kind=REFERENCE_KIND, format_version=REFERENCE_FORMAT_VERSION,
                             what="scaml reference", rebuild=_REBUILD)
    known = list(methods)
    if manifest.get("method") not in known:
        raise ScamlError(
            f"{str(path / MANIFEST_FILE)!r} names an unknown method {manifest.get('method')!r} (this scaml knows "
            f"{', '.join(known)}); rebuild the reference."
        )
    for name in (LATENT_FILE, OBS_FILE, manifest.get("model_dir", "")):
        if not name or not (path / name).exists():
            raise ScamlError(f"the reference directory {str(path)!r} lacks {name!r}; it is incomplete. Rebuild it.")
    return ReferenceDir(path, manifest)


def reference_manifest(adata: ad.AnnData, method: str, batch_key: str, label_key: str | None) -> dict[str, Any]:
    """The manifest entries that come from the reference cells (the method adds its own)."""
    manifest = manifest_header(REFERENCE_KIND, REFERENCE_FORMAT_VERSION)
    manifest.update({"method": method, "batch_key": batch_key, "label_key": label_key,
                     "n_cells": int(adata.n_obs)})
    manifest["conditions"] = sorted(map(str, pd.unique(adata.obs[batch_key].astype(str))))
    if label_key is not None:
        manifest["labels"] = sorted(map(str, pd.unique(adata.obs[label_key].dropna().astype(str))))
    return manifest


def reference_obs(adata: ad.AnnData, batch_key: str, label_key: str | None) -> pd.DataFrame:
    """The ``reference_obs.csv`` table: each reference cell's batch and label."""
    obs = pd.DataFrame({"batch": adata.obs[batch_key].astype(str).to_numpy()}, index=adata.obs_names.astype(str))
    if label_key is not None:
        labels = adata.obs[label_key]
        obs["label"] = labels.astype(object).where(labels.notna(), None).to_numpy()
    obs.index.name = "cell"
    return obs


def write_reference(outdir: Path, manifest: dict[str, Any], latent: np.ndarray, obs: pd.DataFrame) -> None:
    """Write the reference cells (embedding, table) and, last, the manifest into ``outdir``.

    The model sub-directory is written by the method before this; the manifest comes last so
    that a directory with a manifest is complete.
    """
    if latent.shape[0] != len(obs):
        raise ScamlError(f"the reference embedding has {latent.shape[0]} rows for {len(obs)} cells.")
    manifest = dict(manifest)
    manifest["n_latent"] = int(latent.shape[1])
    arrays = {"latent": np.asarray(latent, dtype=np.float32), "cells": obs.index.to_numpy(dtype=str)}
    write_npz(arrays, outdir / LATENT_FILE)
    write_csv(obs, outdir / OBS_FILE)
    write_json(manifest, outdir / MANIFEST_FILE)
