"""UniT's query decoder (seed 002 §3.3-3.4): every layer's output, cross-attention that reads
only the kept tokens, scan and unrolled layers alike, and a detection step and a decoded
classification step that each leave the other task's queries and head as they were."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.errors import ImpError
from imp.experiment import Experiment
from imp.modeling import surgery
from imp.modeling.decoder import QueryDecoder, grid_positions
from imp.modeling.model import ImpModel, init_variables
from imp.tasks.spec import TaskSpec
from imp.training.optimizer import make_optimizer
from imp.training.step import TaskLoss, make_train_step

DECODER = QueryDecoder(width=24, num_layers=3, num_heads=2, mlp_dim=32)
MODEL = ImpModel(
    d_model=16,
    num_layers=1,
    num_heads=2,
    mlp_dim=32,
    embed_dim=8,
    vocab_size=20,
    vision_patch=(1, 8, 8),
    decoder=DECODER,
)
DIGITS = tuple(str(i) for i in range(10))
DETECT = TaskSpec(
    "detect",
    "scenes",
    "detection",
    ("vision",),
    10,
    4,
    class_names=DIGITS,
    queries=6,
    max_objects=3,
)
VQA = TaskSpec(
    "vqa",
    "questions",
    "softmax",
    ("vision", "text"),
    10,
    4,
    class_names=("yes", "no"),
    queries=2,
    vocab_size=20,
    text_length=5,
)


def _decoder_outputs(decoder, seed=0, mask=None):
    rng = np.random.default_rng(seed)
    queries = jnp.asarray(rng.normal(size=(2, 5, 24)), jnp.float32)
    tokens = jnp.asarray(rng.normal(size=(2, 7, 16)), jnp.float32)
    mask = jnp.ones((2, 7), bool) if mask is None else mask
    positions = grid_positions((7,), 24)
    params = nn.unbox(decoder.init(jax.random.key(0), queries, tokens, mask, positions))
    return params, lambda p, t=tokens: decoder.apply(p, queries, t, mask, positions)


def test_every_layer_is_returned_and_masked_tokens_are_never_read():
    mask = jnp.asarray([[True] * 5 + [False] * 2, [True] * 7])
    params, apply = _decoder_outputs(DECODER, mask=mask)
    out = apply(params)
    assert out.shape == (3, 2, 5, 24)
    assert not np.allclose(out[0], out[1])
    tokens = np.random.default_rng(1).normal(size=(2, 7, 16)).astype(np.float32)
    moved = tokens.copy()
    moved[0, 5:] += 3.0  # example 0's masked tokens
    np.testing.assert_array_equal(apply(params, tokens)[:, 0], apply(params, moved)[:, 0])
    moved[0, 0] += 1.0  # and a kept one
    assert not np.allclose(apply(params, tokens)[:, 0], apply(params, moved)[:, 0])


def test_grid_positions_tell_every_cell_apart():
    codes = np.asarray(grid_positions((2, 3, 4), 26))
    assert codes.shape == (24, 26) and not codes[:, 24:].any()  # 3 axes x 8, 2 left at zero
    assert len({tuple(np.round(c, 5)) for c in codes}) == 24
    # row-major: the last axis varies fastest, as tokens are laid out
    np.testing.assert_array_equal(codes[1, :16], codes[0, :16])
    assert not np.array_equal(codes[1, 16:24], codes[0, 16:24])


def test_scanned_and_unrolled_layers_compute_the_same():
    params, apply = _decoder_outputs(DECODER)
    unrolled = dataclasses.replace(DECODER, scan_layers=False)
    flat = surgery.flatten(params["params"])
    layers = {
        f"layer_{i}/{name.removeprefix('layers/')}": np.asarray(value)[i]
        for name, value in flat.items()
        if name.startswith("layers/")
        for i in range(3)
    }
    other = {name: value for name, value in flat.items() if not name.startswith("layers/")}
    restacked = {"params": surgery.unflatten({**other, **layers})}
    _, apply_unrolled = _decoder_outputs(unrolled)
    np.testing.assert_allclose(apply_unrolled(restacked), apply(params), rtol=1e-5, atol=1e-5)


def _batches(rng):
    labels = np.array([[3, 7, -1], [1, -1, -1], [0, 2, 9], [5, 5, -1]], np.int32)
    boxes = rng.uniform(0.2, 0.6, size=(4, 3, 4)).astype(np.float32)
    vision = rng.normal(size=(4, 1, 16, 16, 3)).astype(np.float32)
    return {
        "detect": {"vision": vision, "object_labels": labels, "object_boxes": boxes},
        "vqa": {
            "vision": vision,
            "text": rng.integers(1, 20, size=(4, 5)).astype(np.int32),
            "label": np.array([0, 1, 1, 0], np.int32),
        },
    }


def test_each_decoded_task_trains_its_own_queries_and_head_and_the_shared_decoder():
    experiment = Experiment(tasks=(DETECT, VQA), model=MODEL)
    assert experiment.model.decoded == (
        ("questions", "classification", 2, 2),
        ("scenes", "detection", 10, 6),
    )
    tx, step_size = make_optimizer(10, learning_rate=1e-2, warmup_steps=0)
    params = nn.unbox(init_variables(experiment.model, jax.random.key(0)))["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    batches = _batches(np.random.default_rng(0))
    for task, mine, others in (
        (
            DETECT,
            {"queries_scenes", "detectors_scenes"},
            {"queries_questions", "decoded_classifiers_questions"},
        ),
        (
            VQA,
            {"queries_questions", "decoded_classifiers_questions"},
            {"queries_scenes", "detectors_scenes"},
        ),
    ):
        step = jax.jit(make_train_step(experiment.model, tx, step_size, [task], TaskLoss()))
        new, metrics = step(state, {task.name: batches[task.name]}, jax.random.key(1))
        assert np.isfinite(float(metrics["loss"]))
        if task is DETECT:
            assert {"loss_l1", "loss_giou", "matched_accuracy"} <= set(metrics)
        for name in mine | {"decoder", "encoder"}:
            assert not _same(new["params"][name], state["params"][name]), (task.name, name)
        for name in others:
            assert _same(new["params"][name], state["params"][name]), (task.name, name)


def _same(a, b) -> bool:
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_a_decoded_task_needs_the_decoder_and_its_own_head():
    with pytest.raises(ImpError, match=r"task 'detect' decodes .* bind ImpModel.decoder"):
        Experiment(tasks=(DETECT,), model=MODEL.clone(decoder=None))
    pooled = dataclasses.replace(VQA, name="pooled", queries=0)
    with pytest.raises(ImpError, match="task 'vqa' decodes its head 'questions', which another"):
        Experiment(tasks=(pooled, VQA), model=MODEL)
    with pytest.raises(ImpError, match=r"DropToken \(rate 0.5\) removes tokens whose places"):
        Experiment(tasks=(dataclasses.replace(DETECT, drop_rate=0.5),), model=MODEL)
    with pytest.raises(ImpError, match="only single-label classification and detection decode"):
        TaskSpec("t", "d", "nce", ("vision", "text"), 10, 4, queries=3)
