"""`Experiment`: task options applied to the tasks and heads, and what its construction refuses
(the command-line forms of these errors are in test_cli.py)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from imp.errors import ImpError
from imp.experiment import Experiment
from imp.modeling.model import ImpModel, init_variables
from imp.tasks.spec import TaskSpec

MODEL = ImpModel(d_model=16, num_layers=1, num_heads=2, mlp_dim=32, embed_dim=8, vocab_size=20)


def _task(name, head="", classes=3, **fields):
    fields = {"batch_size": 4, **fields}
    names = tuple(f"c{i}" for i in range(classes))
    return TaskSpec(
        name, name, "softmax", ("vision",), 10, class_names=names, head_name=head, **fields
    )


def test_task_options_reach_the_tasks_and_the_heads(tmp_path, run_config):
    options = (
        "Experiment.task_options = {'digit_videos_cls': "
        "{'loss_weight': 0.5, 'lr_multiplier': 2.0, 'head_name': 'motion'}}"
    )
    experiment, _ = run_config(tmp_path, 1, options)
    cls = experiment.specs["digit_videos_cls"]
    assert (cls.loss_weight, cls.lr_multiplier, cls.head) == (0.5, 2.0, "motion")
    text = experiment.specs["digit_images_text"]
    assert (text.loss_weight, text.lr_multiplier) == (1.0, 1.0)
    assert experiment.model.heads == (("motion", 40),)
    assert "classifiers_motion" in experiment.abstract_state["params"]


def test_a_task_s_own_step_needs_an_alternating_schedule():
    """A task's own warm-up or weight decay applies to the steps that train it alone."""
    from imp.training.samplers import Schedule

    tasks = (_task("a", warmup_steps=5), _task("b"))
    Experiment(tasks=tasks, model=MODEL, schedule=Schedule("round_robin"))
    for name in ("summed", "accumulated"):
        with pytest.raises(
            ImpError, match=rf"task 'a': .*\['warmup_steps'\] .* Schedule.name = '{name}'"
        ):
            Experiment(tasks=tasks, model=MODEL, schedule=Schedule(name))


def test_tasks_may_share_a_head_of_one_size_and_initialiser():
    experiment = Experiment(tasks=(_task("a", "h"), _task("b", "h")), model=MODEL)
    assert experiment.model.heads == (("h", 3),)
    with pytest.raises(
        ImpError, match=r"task 'b' shares the classifier head 'h' .* \(3,\) .* \(4,\)"
    ):
        Experiment(tasks=(_task("a", "h"), _task("b", "h", classes=4)), model=MODEL)
    with pytest.raises(ImpError, match=r"as \(3, 'lecun_normal'\) \(classes, initialiser\)"):
        Experiment(tasks=(_task("a", "h", head_init="lecun_normal"), _task("b", "h")), model=MODEL)


def test_each_head_may_have_its_own_initialiser():
    """Seed 000 Table 6: zero heads for video and audio, LeCun normal for images."""
    tasks = (_task("images", head_init="lecun_normal"), _task("videos"))
    experiment = Experiment(tasks=tasks, model=MODEL.clone(head_init="zeros"))
    assert experiment.model.heads == (("images", 3, "lecun_normal"), ("videos", 3))
    params = jax.tree.map(np.asarray, nn.unbox(init_variables(experiment.model, jax.random.key(0))))
    assert np.any(params["params"]["classifiers_images"]["Dense_0"]["kernel"])
    assert not np.any(params["params"]["classifiers_videos"]["Dense_0"]["kernel"])


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(frames=3), "vision frames x height x width 3x32x32 is not divisible"),
        (dict(eval_height=72), "evaluation input (Dataset.eval_height / eval_width): vision"),
        (dict(batch_size=0), "batch_size = 0; every variant needs a batch of at least 1"),
        (dict(height=8 * 40), "larger than the position tables ImpModel.vision_max_grid"),
    ],
)
def test_inputs_that_do_not_fit_the_model(fields, message):
    model = MODEL.clone(vision_patch=(2, 8, 8), vision_max_grid=(8, 8, 8))
    with pytest.raises(ImpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Experiment(tasks=(_task("a", **fields),), model=model)


def test_train_steps_and_seed_are_checked():
    with pytest.raises(ImpError, match=r"Experiment.train_steps \(TRAIN_STEPS\) = 0"):
        Experiment(tasks=(_task("a"),), model=MODEL, train_steps=0)
    with pytest.raises(ImpError, match="Experiment.seed = '1': expected an integer"):
        Experiment(tasks=(_task("a"),), model=MODEL, seed="1")


def test_a_model_file_alone_is_not_a_run():
    from imp import config

    config.parse(["models/tiny.gin"])
    with pytest.raises(ImpError, match="Experiment.model_dir, Experiment.train_steps, .* add a"):
        Experiment.from_gin()


@pytest.mark.parametrize(
    "factorisation",
    [
        dict(attention="factorised_self_attention"),
        dict(temporal_layers=1),
        dict(token_learner="v1", token_learner_layer=1, num_layers=2),
    ],
)
def test_factorised_models_refuse_droptoken(factorisation):
    """ViViT's factorised models and TokenLearner read the full grid of video tokens."""
    model = MODEL.clone(**factorisation)
    Experiment(tasks=(_task("a"),), model=model)
    with pytest.raises(ImpError, match="task 'a': DropToken .* reads them as a full grid"):
        Experiment(tasks=(_task("a", drop_rate=0.5),), model=model)


def test_factorised_model_options_are_checked():
    """Model 4 splits the heads in two; Model 2 attends jointly within frames."""
    odd = MODEL.clone(attention="factorised_dot_product", num_heads=1)
    with pytest.raises(ImpError, match="num_heads = 1 must be even"):
        Experiment(tasks=(_task("a"),), model=odd)
    with pytest.raises(ImpError, match="did you mean factorised_dot_product"):
        Experiment(tasks=(_task("a"),), model=MODEL.clone(attention="factorised_dot"))
    both = MODEL.clone(attention="factorised_dot_product", temporal_layers=2)
    with pytest.raises(ImpError, match="temporal_layers = 2 .* takes ImpModel.attention = 'joi"):
        Experiment(tasks=(_task("a"),), model=both)
