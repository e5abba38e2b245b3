"""PolyViT's modality-adaptor layers (seed 000 §3.2, `ImpModel.adaptor_layers`): one dense
stack per modality before the shared layers, started from a plain ViT's first layers, and
touched only by the steps of its own modality."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from imp.errors import ImpError
from imp.modeling import surgery
from imp.modeling.model import ImpModel, check_config, init_variables
from imp.tasks.spec import TaskSpec
from imp.training.optimizer import make_optimizer
from imp.training.step import apply_gradients, used_parameters

SMALL = dict(d_model=16, num_layers=3, num_heads=2, mlp_dim=32, embed_dim=8, vocab_size=20)
POLYVIT = dict(SMALL, adaptor_layers=2, adaptor_modalities=("image", "video", "spectrogram"))


def _params(model):
    return nn.unbox(jax.jit(functools.partial(init_variables, model))(jax.random.key(0)))["params"]


@pytest.mark.parametrize("scan", [True, False])
def test_polyvit_starts_from_a_plain_model_and_computes_the_same(scan):
    """Seed 000 §4.3: each adaptor stack is the plain model's first L_adapt layers and the
    shared layers its last L - L_adapt; so, before training, each adapted modality's tokens
    are the plain model's."""
    plain = ImpModel(**SMALL, heads=(("a", 3),))
    polyvit = ImpModel(**POLYVIT, heads=(("a", 3),), scan_layers=scan)
    source = surgery.flatten(_params(plain))
    target = surgery.flatten(_params(polyvit))
    values, report = surgery.transfer(target, source, 2)
    assert report["dropped"] == [] and report["converted"] == []
    assert {n.split("/")[0] for n in report["kept"]} <= {"projections_vision"} | {
        n.split("/")[0] for n in target if n.startswith(("adaptors_", "class_tokens_"))
    }
    params = surgery.unflatten(target | values)
    inputs = [
        ("vision", jax.random.uniform(jax.random.key(1), (2, 2, 16, 16, 3))),  # video
        ("vision", jax.random.uniform(jax.random.key(4), (2, 1, 16, 16, 3))),  # image
        ("spectrogram", jax.random.normal(jax.random.key(2), (2, 32, 16))),
    ]
    for modality, x in inputs:
        encode = functools.partial(ImpModel.encode, modality=modality, x=x)
        got = polyvit.apply({"params": params}, method=encode)[0]
        expected = plain.apply({"params": surgery.unflatten(source)}, method=encode)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=modality)
    if not scan:
        source = surgery.to_layout(source, scanned=False)
        first = "encoder/segment_0_0/dense_0/mlp/wi/kernel"
        for m in ("image", "video", "spectrogram"):
            adaptor = f"adaptors_{m}/segment_0_0/dense_0/mlp/wi/kernel"
            np.testing.assert_array_equal(values[adaptor], source[first])
        shared = values["encoder/segment_0_0/dense_0/mlp/wi/kernel"]
        np.testing.assert_array_equal(shared, source["encoder/segment_0_2/dense_0/mlp/wi/kernel"])


def test_an_image_step_leaves_the_other_modalities_adaptors_untouched():
    """The gradient of an image classification loss is zero on the video and spectrogram
    adaptors (and every collection it reaches is one `used_parameters` lets the update
    change); after an Adam step they are bit-identical, and the image adaptors moved."""
    model = ImpModel(
        **POLYVIT, class_token=True, pool="class_token", heads=(("a", 3),), head_init="lecun_normal"
    )
    params = _params(model)
    task = TaskSpec("images", "a", "softmax", ("vision",), 10, 2, class_names=("x", "y", "z"))
    image = jax.random.uniform(jax.random.key(3), (2, 1, 16, 16, 3))

    def loss(params):
        logits = model.apply({"params": params}, {"vision": image}, head="a")["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 2])).mean()

    grads = jax.jit(jax.grad(loss))(params)
    reached = {k for k, g in grads.items() if any(np.any(x) for x in jax.tree.leaves(g))}
    assert reached == {
        "adaptors_image",
        "class_tokens_vision",
        "embedders_vision",
        "encoder",
        "classifiers_a",
    }
    assert reached <= used_parameters(task)
    tx, step_size = make_optimizer(10, learning_rate=1e-2, warmup_steps=0)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    update = jax.jit(lambda state, grads: apply_gradients(state, grads, tx, step_size, (task,)))
    new = update(state, grads)["params"]
    for name in params:
        same = all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(new[name]), jax.tree.leaves(params[name]), strict=True)
        )
        assert same == (name not in reached), name


@pytest.mark.parametrize(
    "binding, message",
    [
        (dict(adaptor_layers=3), r"adaptor_layers = 3: .* at least one left shared"),
        (dict(adaptor_layers=1, towers="per_modality"), "not with towers = 'per_modality'"),
        (dict(adaptor_layers=1, temporal_layers=1), "temporal_layers"),
        (dict(adaptor_layers=1, adaptor_modalities=("audio",)), "adaptor_modalities"),
        (dict(adaptor_layers=1, adaptor_modalities=("vision", "image")), "not both"),
    ],
)
def test_adaptor_bindings_are_checked(binding, message):
    with pytest.raises(ImpError, match=message):
        check_config(ImpModel(**{**SMALL, **binding}))
