"""Multiview Transformer (seed 001, MTV): cross-view attention is zero at initialisation, so
each view runs as if alone; afterwards a frame of view i hears only the frames of view i+1 that
cover the same time."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.errors import ImpError
from imp.modeling.model import ImpModel, check_config
from imp.modeling.multiview import CrossViewAttention, MultiviewEmbedder

VIEWS = ((4, 8, 8), (2, 8, 8))  # fewest tokens first: on 8 frames, 2 and 4 frames of tubelets
VIDEO = jax.random.uniform(jax.random.key(0), (2, 8, 16, 16, 3), minval=-1, maxval=1)


def _embedder(patches, widths):
    return MultiviewEmbedder(32, patches, widths, 2, 8, (4, 4, 4), scan_layers=False)


def _init(module, *inputs):
    return nn.unbox(module.init(jax.random.key(1), *inputs))["params"]


def test_cross_view_attention_starts_at_zero():
    attention = CrossViewAttention(2)
    x, context = jnp.ones((3, 4, 16)), jax.random.normal(jax.random.key(2), (3, 8, 32))
    params = _init(attention, x, context)
    np.testing.assert_array_equal(attention.apply({"params": params}, x, context), 0.0)


def _alone(params, view: int) -> dict:
    """View `view`'s parameters as those of a one-view embedder."""
    keys = {f"embed_{view}": "embed_0", f"ln_{view}": "ln_0", f"to_global_{view}": "to_global_0"}
    out = {new: params[old] for old, new in keys.items()}
    for r in range(2):
        out[f"layers_{r}"] = {"view_0": params[f"layers_{r}"][f"view_{view}"]}
    return out


def test_views_run_alone_at_initialisation_and_hear_the_next_view_after():
    both = _embedder(VIEWS, (16, 32))
    params = _init(both, VIDEO)
    tokens, mask = both.apply({"params": params}, VIDEO)
    assert tokens.shape == (2, 2 + 4, 32) and bool(mask.all())  # 2 + 4 frame tokens
    for view, rows in ((0, slice(0, 2)), (1, slice(2, 6))):
        alone = _embedder((VIEWS[view],), ((16, 32)[view],))
        expected, _ = alone.apply({"params": _alone(params, view)}, VIDEO)
        np.testing.assert_allclose(tokens[:, rows], expected, rtol=1e-5, atol=1e-5)

    # Cross-view attention trained: view 0 changes, the last view (which hears none) does not.
    for r in range(2):
        cross = params[f"layers_{r}"]["cross_0"]
        cross["out_kernel"] = jax.random.normal(jax.random.key(3 + r), cross["out_kernel"].shape)
    heard, _ = both.apply({"params": params}, VIDEO)
    assert not np.allclose(heard[:, 0:2], tokens[:, 0:2], atol=1e-3)
    np.testing.assert_allclose(heard[:, 2:6], tokens[:, 2:6], rtol=1e-5, atol=1e-5)

    # View 0's first frame (video frames 0-3) hears view 1's frames 0-1 only: changing video
    # frames 4-7 leaves it as it was.
    changed = VIDEO.at[:, 4:].set(0.0)
    later, _ = both.apply({"params": params}, changed)
    np.testing.assert_allclose(later[:, 0], heard[:, 0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(later[:, 1], heard[:, 1], atol=1e-3)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(view_widths=(32,)), "one width per view"),
        (dict(view_widths=(16, 36)), "each a multiple of the head width 8"),
        (dict(views=((2, 8, 8), (4, 8, 8))), "fewest tokens first"),
        (dict(views=((4, 8, 8), (2, 16, 16))), "share the tubelet's height and width"),
        (dict(view_layers=0), "ImpModel.view_layers"),
        (dict(temporal_layers=1), "takes attention 'joint', no temporal_layers"),
    ],
)
def test_multiview_options_are_checked(fields, message):
    base = dict(views=VIEWS, view_widths=(16, 32), view_layers=2)
    model = ImpModel(d_model=32, num_heads=4, **{**base, **fields})
    with pytest.raises(ImpError, match=message):
        check_config(model)
