"""The graph table: one compiled train step per input signature (seed 004 §3.1).

Key = (task, objective, input shapes and dtypes, shardings). The first use of a key compiles
ahead of time (`jit(...).lower(...).compile()`); later uses are hits. Per entry the table keeps
compile seconds, hits and XLA's memory analysis. `precompile` compiles a list of entries
before training, in a thread pool (XLA compiles outside the GIL). `use_persistent_cache`
points JAX's compilation cache at a directory, so a restarted run reads its executables back
instead of compiling them again.
"""

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable

import jax
from jax.experimental.compilation_cache import compilation_cache

MEMORY_FIELDS = ("argument", "output", "temp", "alias", "generated_code")


@dataclasses.dataclass
class Entry:
    compiled: jax.stages.Compiled
    compile_seconds: float
    memory: dict[str, int]
    hits: int = 0


def signature(tree) -> tuple:
    """Shapes, dtypes and shardings of a pytree of arrays, hashable."""
    leaves, treedef = jax.tree.flatten_with_path(tree)
    return (str(treedef),) + tuple(
        (
            jax.tree_util.keystr(path),
            tuple(x.shape),
            str(x.dtype),
            str(getattr(x, "sharding", None)),
        )
        for path, x in leaves
    )


def memory_analysis(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Bytes of arguments, outputs, temporaries, aliased buffers and code (0 where the
    backend does not say)."""
    analysis = compiled.memory_analysis()
    return {
        field: int(getattr(analysis, f"{field}_size_in_bytes", 0) or 0) if analysis else 0
        for field in MEMORY_FIELDS
    }


def use_persistent_cache(directory: str) -> None:
    """Caches every executable in `directory` (JAX's persistent compilation cache)."""
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # JAX opens its cache once per process; forget an earlier one so this directory is used.
    compilation_cache.reset_cache()


class GraphTable:
    def __init__(self):
        self.entries: dict[tuple, Entry] = {}

    def _compile(self, compile_fn: Callable[[], jax.stages.Compiled]) -> Entry:
        start = time.perf_counter()
        compiled = compile_fn()
        return Entry(compiled, time.perf_counter() - start, memory_analysis(compiled))

    def lookup(
        self, key: tuple, compile_fn: Callable[[], jax.stages.Compiled]
    ) -> tuple[jax.stages.Compiled, bool]:
        """Returns the compiled graph for `key` and whether this call compiled it."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.hits += 1
            return entry.compiled, False
        self.entries[key] = self._compile(compile_fn)
        return self.entries[key].compiled, True

    def precompile(
        self, jobs: dict[tuple, Callable[[], jax.stages.Compiled]], threads: int
    ) -> None:
        """Compiles every key of `jobs` not in the table yet, `threads` at a time."""
        todo = {k: fn for k, fn in jobs.items() if k not in self.entries}
        with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
            futures = {k: pool.submit(self._compile, fn) for k, fn in todo.items()}
            for key, future in futures.items():
                self.entries[key] = future.result()

    def stats_by_task(self) -> dict[str, dict]:
        """Per task (the first element of each key): compiles, compile seconds, hits, and the
        largest temporary memory of its graphs."""
        out: dict[str, dict] = {}
        for key, entry in self.entries.items():
            s = out.setdefault(
                key[0], {"compiles": 0, "compile_seconds": 0.0, "hits": 0, "temp_bytes": 0}
            )
            s["compiles"] += 1
            s["compile_seconds"] += entry.compile_seconds
            s["hits"] += entry.hits
            s["temp_bytes"] = max(s["temp_bytes"], entry.memory["temp"])
        return out

    def entry_stats(self) -> list[dict]:
        """One row per compiled graph: its task, compile seconds, hits and memory."""
        return [
            {"task": key[0], "compile_seconds": e.compile_seconds, "hits": e.hits, **e.memory}
            for key, e in self.entries.items()
        ]
