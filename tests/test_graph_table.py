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


def _step_compile_fn(x):
    def step(v):
        for _ in range(30):  # enough work for compile time to be measurable
            v = jnp.sin(v @ v.T) @ v
        return v

    return lambda: jax.jit(step).lower(x).compile()


def test_precompile_compiles_each_entry_once_and_records_memory():
    table = GraphTable()
    shapes = [(8, 8), (16, 8), (32, 8)]
    calls = []

    def job(shape):
        fn = _step_compile_fn(jnp.ones(shape))

        def counted():
            calls.append(shape)
            return fn()

        return counted

    jobs = {("t", s): job(s) for s in shapes}
    table.precompile(jobs, threads=2)
    table.precompile(jobs, threads=2)  # already there: nothing compiles
    assert sorted(calls) == sorted(shapes)
    for s in shapes:
        assert not table.lookup(("t", s), job(s))[1]
    rows = table.entry_stats()
    assert len(rows) == 3 and all(
        r["argument"] == 8 * r_shape[0] * 4 for r, r_shape in zip(rows, shapes, strict=True)
    )
    assert all(r["temp"] >= 0 and r["output"] > 0 for r in rows)


def test_persistent_cache_serves_a_restart(tmp_path, capsys):
    from imp.training.graph_table import use_persistent_cache

    previous = jax.config.jax_compilation_cache_dir
    try:
        use_persistent_cache(str(tmp_path / "cache"))
        x = jnp.ones((64, 64))
        first = GraphTable()
        first.lookup(("t",), _step_compile_fn(x))
        written = any((tmp_path / "cache").iterdir())
        jax.clear_caches()  # as a new process would start
        hits = []
        listener = lambda event, **_: hits.append(event)  # noqa: E731
        jax.monitoring.register_event_listener(listener)
        restart = GraphTable()
        restart.lookup(("t",), _step_compile_fn(x))
        jax.monitoring.unregister_event_listener(listener)
    finally:  # back to the test run's cache (JAX opens its cache once: reset it)
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", previous)
        compilation_cache.reset_cache()
    cold = first.entry_stats()[0]["compile_seconds"]
    warm = restart.entry_stats()[0]["compile_seconds"]
    with capsys.disabled():
        print(f"\ncompile: first start {cold:.3f} s, restart with persistent cache {warm:.3f} s")
    assert written  # the first start stored its executable
    # The restart read it back instead of compiling; the timings are printed, not asserted:
    # speed claims belong to `imp bench`.
    assert "/jax/compilation_cache/cache_hits" in hits
