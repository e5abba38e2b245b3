"""`imp model-info` counts, checked against closed forms."""

import pytest

from imp.modeling.info import model_info
from imp.modeling.model import ImpModel

D, L, H, M, E = 32, 4, 2, 64, 4
BASE = dict(d_model=D, num_layers=L, num_heads=H, mlp_dim=M, embed_dim=D, vocab_size=50)


def _layer(d, m):
    """One pre-LN block: qkv + out projections, two MLP matrices, two LayerNorms, with biases."""
    return (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + 4 * d


def test_dense_counts():
    info = model_info(ImpModel(**BASE))
    assert info["components"]["encoder"] == L * _layer(D, M) + 2 * D
    assert info["total_parameters"] == sum(info["components"].values())
    ppt = (
        info["components"]["embedders_vision"]
        + info["components"]["encoder"]
        + info["components"]["projections_vision"]
    )
    assert info["parameters_per_token"] == ppt
    assert info["flops_per_token"] > 2 * L * _layer(D, M)  # matmuls + attention + embedding


@pytest.mark.parametrize("moe_every, moe_layers", [(2, 2), (4, 1)])
def test_moe_counts_one_expert_per_token(moe_every, moe_layers):
    dense = model_info(ImpModel(**BASE))
    sparse = model_info(ImpModel(**BASE, num_experts=E, moe_every=moe_every))
    expert = D * M + M + M * D + D
    router = D * E
    extra_total = moe_layers * ((E - 1) * expert + router)
    assert sparse["total_parameters"] == dense["total_parameters"] + extra_total
    assert sparse["parameters_per_token"] == dense["parameters_per_token"] + moe_layers * router


def test_multi_tower_has_one_encoder_per_modality():
    shared = model_info(ImpModel(**BASE))
    towers = model_info(ImpModel(**BASE, towers="per_modality"))
    encoder = shared["components"]["encoder"]
    assert towers["total_parameters"] == shared["total_parameters"] + 3 * encoder
    assert towers["parameters_per_token"] == shared["parameters_per_token"]


def test_paper_heads_temperatures_and_qk_layernorm_counts():
    """Per-pair MLP heads (Dense + Dense + LayerNorm, with biases), one temperature per pair,
    and qk-LayerNorm's two [head_dim] scales per layer; PPT counts the vision-to-text head."""
    plain = model_info(ImpModel(**BASE))
    paper = model_info(
        ImpModel(**BASE, contrastive_head="mlp", temperature="per_pair", qk_layernorm=True)
    )
    head = (D * D + D) + (D * D + D) + 2 * D
    heads = {k: v for k, v in paper["components"].items() if k.startswith("projections_")}
    assert len(heads) == 12 and set(heads.values()) == {head}
    temperatures = [k for k in paper["components"] if k.startswith("temperature_")]
    assert len(temperatures) == 6
    qk = L * 2 * (D // H)
    assert paper["components"]["encoder"] == plain["components"]["encoder"] + qk
    linear = plain["components"]["projections_vision"]
    assert paper["parameters_per_token"] == plain["parameters_per_token"] - linear + head + qk
    assert paper["total_parameters"] == (
        plain["total_parameters"] - 4 * linear - 1 + 12 * head + 6 + qk
    )
