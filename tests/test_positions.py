"""Positions at normalised coordinates (seed 004 §3.4; IMP's reference code): every
resolution reads the tables at the same place for the same field of view."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.modeling.embedders import VisionEmbedder, grid_buckets, position_buckets


def _naive_bucket(i: int, n: int, size: int) -> int:
    return int(np.floor(i / n * size))


@pytest.mark.parametrize("n,size", [(4, 16), (8, 16), (16, 16), (3, 8), (5, 7), (12, 32)])
def test_buckets_are_the_floor_of_the_normalised_coordinate(n, size):
    expected = [_naive_bucket(i, n, size) for i in range(n)]
    assert position_buckets(n, size).tolist() == expected
    assert len(set(expected)) == n  # a grid within the table: every patch its own bucket


@pytest.mark.parametrize("full,size", [(4, 16), (8, 8), (16, 32), (6, 12), (10, 16)])
def test_a_half_resolution_patch_reads_the_buckets_of_the_patches_it_covers(full, size):
    half = position_buckets(full // 2, size).tolist()
    whole = position_buckets(full, size).tolist()
    for i, bucket in enumerate(half):
        covered = whole[2 * i : 2 * i + 2]  # the full-resolution patches of its field of view
        assert bucket == covered[0]  # the same place: its corner
        upper = half[i + 1] if i + 1 < len(half) else size
        assert all(bucket <= b < upper for b in covered)


def test_grid_buckets_are_row_major():
    rows = np.asarray(grid_buckets((2, 3), (4, 6)))
    expected = [
        [_naive_bucket(a, 2, 4), _naive_bucket(b, 3, 6)] for a in range(2) for b in range(3)
    ]
    assert rows.tolist() == expected


def test_a_half_resolution_clip_gets_the_positions_of_the_full_clip_at_its_corners():
    embedder = VisionEmbedder(8, patch=(2, 4, 4), max_grid=(4, 8, 8))
    variables = embedder.init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))
    zero_patches = {"params": {**nn.unbox(variables)["params"]}}
    zero_patches["params"]["tubelet"] = jax.tree.map(
        jnp.zeros_like, zero_patches["params"]["tubelet"]
    )
    full, _ = embedder.apply(zero_patches, jnp.zeros((1, 4, 32, 32, 3)))  # grid 2 x 8 x 8
    half, _ = embedder.apply(zero_patches, jnp.zeros((1, 4, 16, 16, 3)))  # grid 2 x 4 x 4
    full = np.asarray(full).reshape(2, 8, 8, 8)
    half = np.asarray(half).reshape(2, 4, 4, 8)
    np.testing.assert_allclose(half, full[:, ::2, ::2], rtol=1e-6)
