"""Save and load scaml VAE models as directories.

A model directory holds:

- ``model.pt``: the network's ``state_dict`` (tensors only, loaded with ``weights_only=True``);
- ``config.json``: model class, parameters, network configuration, surgery
  settings, condition and label categories, training history, format and
  package versions;
- ``genes.txt``: the model's genes, one per line, in input order.

Saving writes into a temporary directory beside the target and renames it into
place, so a reader never sees a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .. import __version__
from .._utils import jsonable, package_versions
from ..errors import ScamlError
from .model import FORMAT_VERSION, MODEL_CLASSES, BaseVAE, resolve_device
from .modules import ConditionalVAE, ModuleConfig

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
GENES_FILE = "genes.txt"


def save_model(model: BaseVAE, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``model`` to ``directory`` atomically (see :meth:`scaml.vae.model.BaseVAE.save`)."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ScamlError(f"{str(target)!r} exists and is a file; choose a directory path for the model.")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ScamlError(
            f"model directory {str(target)!r} already exists and is not empty; pass overwrite=True "
            "(--overwrite) to replace it, or choose another directory."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    config.update(
        {
            "format_version": FORMAT_VERSION,
            "scaml_version": __version__,
            "torch_version": torch.__version__,
            "versions": package_versions(),
            "batch_key": model.batch_key,
            "label_key": model.label_key,
            "conditions": list(model.conditions),
            "labels": None if model.labels is None else list(model.labels),
            "n_genes": len(model.genes),
            "history": model.history,
        }
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        state = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(jsonable(config), indent=2) + "\n")
        (tmp / GENES_FILE).write_text("\n".join(model.genes) + "\n")
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old.{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _compat_key(version: str) -> tuple[int, ...] | None:
    """The part of a version that must match: (major,) from 1.0 on, (0, minor) before (semver)."""
    try:
        parts = [int(x) for x in str(version).split("+")[0].split(".")[:2]]
    except ValueError:
        return None
    if not parts or (len(parts) < 2 and parts[0] == 0):
        return None
    return tuple(parts[:2]) if parts[0] == 0 else (parts[0],)


def load_model(directory: str | os.PathLike, device: str = "auto") -> BaseVAE:
    """Load a model saved with :meth:`scaml.vae.model.BaseVAE.save`.

    Parameters
    ----------
    directory
        The model directory.
    device
        "auto" (CUDA when available, else CPU), "cpu" or "cuda".

    Returns
    -------
    BaseVAE
        The model (SCVI, TRVAE or SCANVI; a query model keeps its surgery
        settings and frozen weights). It holds no data: pass an AnnData to
        ``get_latent`` / ``predict``, or use :func:`scaml.vae.load_query`.

    Raises
    ------
    ScamlError
        Missing files, unreadable or inconsistent contents, or a directory
        written by an incompatible version.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ScamlError(f"model directory {str(path)!r} does not exist; pass the directory written by model.save().")
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE, GENES_FILE) if not (path / name).is_file()]
    if missing:
        raise ScamlError(
            f"{str(path)!r} is not a scaml model directory: {', '.join(missing)} missing. "
            "Pass the directory written by model.save() (or `scaml reference build`)."
        )
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScamlError(f"{str(path / CONFIG_FILE)!r} is not valid JSON ({exc}); the model directory is corrupt.") from exc
    if not isinstance(config, dict):
        raise ScamlError(f"{str(path / CONFIG_FILE)!r} does not hold a model configuration; the directory is corrupt.")
    fmt = config.get("format_version")
    if fmt != FORMAT_VERSION:
        raise ScamlError(
            f"the model in {str(path)!r} has format version {fmt!r} (written by scaml "
            f"{config.get('scaml_version', 'unknown')}); this scaml ({__version__}) reads format version "
            f"{FORMAT_VERSION}. Rebuild the reference with this version of scaml."
        )
    saved_version = str(config.get("scaml_version", ""))
    saved_key, own_key = _compat_key(saved_version), _compat_key(__version__)
    unknown = (None, (0, 0))  # (0, 0): a source tree without installed metadata
    if saved_key is None or (own_key not in unknown and saved_key not in unknown and saved_key != own_key):
        raise ScamlError(
            f"the model in {str(path)!r} was written by scaml {saved_version}, incompatible with this scaml "
            f"({__version__}); rebuild the reference with this version."
        )
    name = config.get("model")
    if name not in MODEL_CLASSES:
        raise ScamlError(f"{str(path / CONFIG_FILE)!r} names an unknown model {name!r}; expected one of {sorted(MODEL_CLASSES)}.")
    try:
        genes = (path / GENES_FILE).read_text().splitlines()
        conditions = [str(c) for c in config["conditions"]]
        labels = config.get("labels")
        module_cfg = ModuleConfig(**config["module"])
        config["params"]  # noqa: B018 (presence check)
    except (KeyError, TypeError) as exc:
        raise ScamlError(f"{str(path / CONFIG_FILE)!r} lacks an entry ({exc}); the model directory is corrupt.") from exc
    if len(genes) != module_cfg.n_input or len(genes) != config.get("n_genes", len(genes)):
        raise ScamlError(
            f"{str(path / GENES_FILE)!r} lists {len(genes)} genes but the network expects {module_cfg.n_input}; "
            "the model directory is corrupt."
        )
    if len(conditions) != module_cfg.n_conditions:
        raise ScamlError(
            f"config.json lists {len(conditions)} conditions but the network has {module_cfg.n_conditions}; "
            "the model directory is corrupt."
        )
    dev = resolve_device(device)
    try:
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise ScamlError(f"cannot read the weights {str(path / WEIGHTS_FILE)!r} ({exc}); the model directory is corrupt.") from exc
    module = ConditionalVAE(module_cfg)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ScamlError(
            f"the weights in {str(path / WEIGHTS_FILE)!r} do not fit the configuration in config.json ({str(exc)[:300]}); "
            "the model directory is corrupt or mixed from two models."
        ) from exc
    if config.get("surgery"):
        from .surgery import apply_freeze

        apply_freeze(module, config["surgery"])
    for key in ("versions", "scaml_version", "torch_version", "conditions", "labels", "n_genes", "history", "label_key"):
        config.pop(key, None)
    history = json.loads((path / CONFIG_FILE).read_text()).get("history") or {}
    return MODEL_CLASSES[name]._restore(
        config, module, genes, conditions, labels, dev, history=history, batch_key=config.get("batch_key"),
    )
