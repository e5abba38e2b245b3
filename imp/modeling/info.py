"""`imp model-info`: parameter counts, parameters per token and FLOPs of the configured model,
from shapes only (`jax.eval_shape` and XLA's cost analysis of the lowered graph; nothing is
allocated, so IMP-MoE-L is as quick as tiny).

Parameters per token (PPT, seed 004 Table 1) count what one vision token passes through: its
embedder (tubelet projection and position tables, a class token), its modality-adaptor layers
(PolyViT), the encoder with one expert per MoE layer,
and one contrastive head (vision to text). Lookup tables of other modalities (e.g. the text
vocabulary), the other contrastive heads and the classifier heads are not on that path.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imp.modeling.model import ImpModel, head_key, init_variables

# FLOPs are measured on one clip of 4 x 16 x 16 tubelets: the paper's 16x256x256 video.
_REFERENCE_GRID = (4, 16, 16)


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _expert_parameters(tree) -> int:
    """Parameters of stacked expert weights (leading `expert` axis) in a params tree."""
    total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        names = [getattr(p, "key", "") for p in path]
        if "moe" in names and names[-1] in ("wi", "wo", "bi", "bo"):
            total += int(np.prod(x.shape))
    return total


def model_info(model: ImpModel) -> dict:
    params = nn.unbox(jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))["params"]
    components = {name: _count(tree) for name, tree in params.items()}
    encoder = params["encoder"] if "encoder" in params else params["encoders_vision"]
    experts = _expert_parameters(encoder)
    one_expert = experts // model.num_experts if model.num_experts else experts
    ppt = (
        components["embedders_vision"]
        + components.get("class_tokens_vision", 0)
        + components.get("adaptors_vision", 0)
        + _count(encoder)
        - experts
        + one_expert
        + components[f"projections_{head_key(model.contrastive_head, 'vision', 'text')}"]
    )
    return {
        "total_parameters": sum(components.values()),
        "parameters_per_token": ppt,
        "flops_per_token": _flops_per_token(model),
        "components": components,
        "config": {
            f: getattr(model, f)
            for f in (
                "d_model",
                "num_layers",
                "num_heads",
                "mlp_dim",
                "num_experts",
                "moe_every",
                "towers",
                "attention",
                "temporal_layers",
                "token_learner",
                "token_learner_layer",
                "views",
                "positions",
                "class_token",
                "pool",
                "gelu",
                "adaptor_layers",
                "qk_layernorm",
                "embed_dim",
                "contrastive_head",
                "temperature",
                "temperature_init",
            )
        },
    }


def _flops_per_token(model: ImpModel) -> float:
    """Forward FLOPs of encoding one reference clip, per token."""
    grid = _REFERENCE_GRID
    clip = tuple(g * p for g, p in zip(grid, model.vision_patch, strict=True))
    return forward_flops(model, {"vision": (*clip, 3)}) / np.prod(grid)


def forward_flops(model: ImpModel, shapes: dict[str, tuple[int, ...]], head: str | None = None):
    """Forward FLOPs of one example of per-example input `shapes` (modality -> shape, as
    `TaskSpec.input_shapes` gives), through classifier `head` or the contrastive heads (XLA
    cost analysis of the lowered graph; nothing is compiled or allocated).

    Counted on the unrolled layers: XLA's cost analysis counts a scanned loop body once.
    """
    model = model.clone(scan_layers=False)
    params = nn.unbox(jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))["params"]
    inputs = {
        m: jax.ShapeDtypeStruct((1, *shape), jnp.int32 if m == "text" else jnp.float32)
        for m, shape in shapes.items()
    }
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, head=head))
    cost = forward.lower(params, inputs).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def format_table(info: dict) -> str:
    rows = [f"{'component':<28}{'parameters':>16}"]
    rows += [f"{name:<28}{count:>16,}" for name, count in info["components"].items()]
    rows.append(f"{'total':<28}{info['total_parameters']:>16,}")
    rows.append(f"{'parameters per token (PPT)':<28}{info['parameters_per_token']:>16,}")
    rows.append(f"{'forward GFLOPs per token':<28}{info['flops_per_token'] / 1e9:>16.3f}")
    rows.append("config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()))
    return "\n".join(rows)
