"""The sampled UMAP of large data (scaml.umap_sample) and its use by integrate."""

from __future__ import annotations

import numpy as np
import pytest

from scaml.errors import ScamlError
from scaml.umap_sample import draw_sample, place_cells, sampled_umap


def _blobs(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.array([[0.0] * 8, [12.0] + [0.0] * 7, [0.0, 12.0] + [0.0] * 6])
    return (centres[labels] + rng.normal(size=(n, 8))).astype(np.float32), labels


def test_draw_sample_is_seeded_sorted_and_only_when_needed():
    assert draw_sample(1000, 2000) is None
    assert draw_sample(1000, 0) is None
    a, b = draw_sample(10_000, 500, random_state=3), draw_sample(10_000, 500, random_state=3)
    assert a.size == 500 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, draw_sample(10_000, 500, random_state=4))
    with pytest.raises(ScamlError, match="at least 100"):
        draw_sample(10_000, 50)
    with pytest.raises(ScamlError, match="-1"):
        draw_sample(10_000, -1)


def test_place_cells_puts_a_copy_of_a_sample_cell_on_it_and_others_between_neighbours():
    X_sample = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    coords = np.array([[1.0, 1.0], [5.0, 1.0], [1.0, 5.0]], np.float32)
    placed = place_cells(X_sample, coords, np.array([[10.0, 0.0], [5.0, 0.0]], np.float32), k=2)
    assert np.allclose(placed[0], coords[1], atol=1e-4)  # on a sample cell: its position
    assert np.allclose(placed[1], [3.0, 1.0], atol=1e-4)  # halfway between the two nearest


def test_sampled_umap_keeps_sample_layout_and_places_cells_with_their_type():
    X, labels = _blobs()
    sample = draw_sample(X.shape[0], 600, random_state=0)
    layout = sampled_umap(X, sample, n_neighbors=15, k=30, random_state=0)
    assert layout.coords.shape == (X.shape[0], 2) and np.isfinite(layout.coords).all()
    assert layout.neighbors.n_cells == 600 and layout.neighbors.k == 30
    # placed cells land nearest the centre of their own type's sample cells
    rest = np.setdiff1d(np.arange(X.shape[0]), sample)
    centres = np.stack([layout.coords[sample][labels[sample] == t].mean(axis=0) for t in range(3)])
    nearest = np.argmin(((layout.coords[rest][:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels[rest]).mean() > 0.99
    again = sampled_umap(X, sample, n_neighbors=15, k=30, random_state=0)
    assert np.allclose(again.coords, layout.coords)
