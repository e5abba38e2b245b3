import jax
import jax.numpy as jnp

from imp.training.graph_table import GraphTable, signature


def test_one_compile_per_signature_then_hits():
    table = GraphTable()
    compiles = []

    def lookup(name, x):
        def compile_fn():
            compiles.append(x.shape)
            return jax.jit(lambda v: v * 2).lower(x).compile()

        return table.lookup((name, signature(x)), compile_fn)

    small, large = jnp.ones((2, 3)), jnp.ones((4, 3))
    assert lookup("t", small)[1] and lookup("t", large)[1]
    for _ in range(3):
        assert not lookup("t", small)[1]
        assert not lookup("t", jnp.zeros((4, 3)))[1]
    assert compiles == [(2, 3), (4, 3)]
    stats = table.stats_by_task()["t"]
    assert stats["compiles"] == 2 and stats["hits"] == 6 and stats["compile_seconds"] > 0


def test_signature_distinguishes_dtype_and_structure():
    assert signature(jnp.ones(3)) != signature(jnp.ones(3, jnp.int32))
    assert signature({"a": jnp.ones(3)}) != signature({"b": jnp.ones(3)})
    assert signature({"a": jnp.ones(3)}) == signature({"a": jnp.zeros(3)})
