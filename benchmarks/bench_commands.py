"""Every scaml command at a typical size: wall time and peak memory of each, on simulated counts.

Simulates ``--cells`` cells x ``--genes`` genes in four batches (three form the reference, the
fourth the query), writes them as h5ad, and runs each command the way a user would, each in its
own process (so the peak RSS printed is that command's own): integrate, evaluate, train (four
models), learning-curve, novelty, reference build for every method and map onto each. Training is
kept short (``--epochs``); the point is that every path works at this size and what it costs.

    OMP_NUM_THREADS=2 python benchmarks/bench_commands.py --cells 100000 --genes 2000

Above 50,000 cells scaml's neighbour search switches from exact to pynndescent, so 100k cells
runs the approximate paths of the pipeline graph, the metrics and label transfer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The peak is the process's own VmHWM: ru_maxrss would carry over the parent's RSS at fork.
RUNNER = """
import sys
from scaml.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
print(f"__PEAK_MIB__ {peak:.0f}", file=sys.stderr)
sys.exit(code)
"""


def _run(name: str, argv: list[str], rows: list[dict]) -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, *map(str, argv), "--quiet"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = next((line.split()[1] for line in proc.stderr.splitlines() if line.startswith("__PEAK_MIB__")), "?")
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-2:]}"
    rows.append({"command": name, "seconds": round(seconds, 1), "peak_mib": peak, "status": status})
    print(f"{name:<28} {seconds:8.1f} s {peak:>8} MiB  {status}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000, help="cells simulated, all batches (default 100000)")
    parser.add_argument("--genes", type=int, default=2000, help="genes simulated (default 2000)")
    parser.add_argument("--epochs", type=int, default=5, help="VAE training epochs, reference and query (default 5)")
    parser.add_argument("--methods", nargs="+", default=["scvi", "trvae", "scanvi", "symphony"])
    parser.add_argument("--keep", default=None, help="folder to keep the outputs in (default: a temporary one)")
    args = parser.parse_args()

    from scaml._utils import package_versions
    from scaml.datasets import simulate

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="scaml-bench-commands-"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    adata = simulate(n_cells=args.cells, n_genes=args.genes, n_batches=4, n_cell_types=8, random_state=0)
    adata.obs["is_foreign"] = (adata.obs["cell_type"] == adata.obs["cell_type"].cat.categories[0]).astype(str)
    reference = adata[adata.obs["batch"] != "batch4"].copy()
    query = adata[adata.obs["batch"] == "batch4"].copy()
    paths = {name: folder / f"{name}.h5ad" for name in ("reference", "query")}
    reference.write_h5ad(paths["reference"])
    query.write_h5ad(paths["query"])
    print(f"simulated {adata.n_obs} cells x {adata.n_vars} genes ({adata.X.nnz / 1e6:.0f}M non-zeros) in "
          f"{time.perf_counter() - start:.0f} s; reference {reference.n_obs} cells, query {query.n_obs}")
    versions = package_versions()
    print("versions:", {k: versions.get(k) for k in ("scaml", "scanpy", "numpy", "torch", "pynndescent")})
    del adata, reference, query

    rows: list[dict] = []
    ref = paths["reference"]
    _run("integrate", ["integrate", ref, "--batch-key", "batch", "--label-key", "cell_type",
                       "--out", folder / "integrate", "--overwrite"], rows)
    _run("evaluate", ["evaluate", folder / "integrate" / "integrated.h5ad", "--batch-key", "batch",
                      "--label-key", "cell_type", "--embeddings", "X_pca", "X_pca_harmony",
                      "--out", folder / "evaluate", "--overwrite"], rows)
    _run("train (4 models)", ["train", ref, "--label-key", "cell_type", "--split-key", "batch",
                              "--split-train", "batch1", "--split-test", "batch2", "batch3", "--n-hvg", "2000",
                              "--models", "lr", "rf", "xgb", "mlp", "--out", folder / "train", "--overwrite"], rows)
    _run("learning-curve (lr)", ["learning-curve", ref, "--label-key", "cell_type", "--group-key", "batch",
                                 "--model", "lr", "--sizes", "0.1", "0.5", "1", "--repeats", "2",
                                 "--out", folder / "curve", "--overwrite"], rows)
    _run("novelty (knn)", ["novelty", ref, "--hek-key", "is_foreign", "--hek-positive", "True",
                           "--out", folder / "novelty", "--overwrite"], rows)
    for method in args.methods:
        refdir = folder / f"ref_{method}"
        build = ["reference", "build", ref, "--method", method, "--batch-key", "batch",
                 "--label-key", "cell_type", "--out", refdir, "--overwrite"]
        mapping = ["map", "--reference", refdir, "--query", paths["query"], "--label-key", "cell_type",
                   "--out", folder / f"map_{method}", "--overwrite"]
        if method != "symphony":
            build += ["--max-epochs", str(args.epochs)]
            mapping += ["--max-epochs", str(args.epochs)]
        _run(f"reference build {method}", build, rows)
        _run(f"map {method}", mapping, rows)
        metrics = folder / f"map_{method}" / "metrics.json"
        if metrics.exists():
            knn = json.loads(metrics.read_text())["weighted_knn_no_unknown"]
            print(f"{'':<28} query accuracy {knn['accuracy']:.3f}, macro F1 {knn['macro_f1']:.3f}")
    print(json.dumps(rows, indent=1))
    print(f"outputs in {folder}" if args.keep else "")


if __name__ == "__main__":
    main()
