"""`imp model-info`: parameter counts of the configured model, from shapes only."""

import flax.linen as nn
import jax
import numpy as np

from imp.modeling.model import ImpModel, init_variables


def model_info() -> dict:
    """Total parameters and a per-component breakdown (no allocation: `jax.eval_shape`)."""
    model = ImpModel()
    shapes = nn.unbox(jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))["params"]
    components = {
        name: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
        for name, tree in shapes.items()
    }
    return {
        "total_parameters": sum(components.values()),
        "components": components,
        "config": {
            f: getattr(model, f)
            for f in ("d_model", "num_layers", "num_heads", "mlp_dim", "embed_dim", "vocab_size")
        },
    }


def format_table(info: dict) -> str:
    rows = [f"{'component':<28}{'parameters':>14}"]
    rows += [f"{name:<28}{count:>14,}" for name, count in info["components"].items()]
    rows.append(f"{'total':<28}{info['total_parameters']:>14,}")
    rows.append("config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()))
    return "\n".join(rows)
