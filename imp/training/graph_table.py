"""The graph table: one compiled train step per input signature (seed 004 §3.1).

Key = (task, objective, input shapes and dtypes, shardings). The first use of a key compiles
ahead of time; later uses are hits. Compile seconds and hits are kept per entry.
"""

import dataclasses
import time
from collections.abc import Callable

import jax


@dataclasses.dataclass
class Entry:
    compiled: jax.stages.Compiled
    compile_seconds: float
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


class GraphTable:
    def __init__(self):
        self.entries: dict[tuple, Entry] = {}

    def lookup(
        self, key: tuple, compile_fn: Callable[[], jax.stages.Compiled]
    ) -> tuple[jax.stages.Compiled, bool]:
        """Returns the compiled graph for `key` and whether this call compiled it."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.hits += 1
            return entry.compiled, False
        start = time.perf_counter()
        compiled = compile_fn()
        self.entries[key] = Entry(compiled, time.perf_counter() - start)
        return compiled, True

    def stats_by_task(self) -> dict[str, dict]:
        """Per task (the first element of each key): compiles, compile seconds, hits."""
        out: dict[str, dict] = {}
        for key, entry in self.entries.items():
            s = out.setdefault(key[0], {"compiles": 0, "compile_seconds": 0.0, "hits": 0})
            s["compiles"] += 1
            s["compile_seconds"] += entry.compile_seconds
            s["hits"] += entry.hits
        return out
