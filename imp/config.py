"""Gin configuration with t5x's flag conventions.

`--gin_file F` (repeatable) is resolved against `--gin_search_paths` and then the project's own
`gin/` folder; `--gin.NAME=VALUE` becomes the binding `NAME = VALUE` (a bare string value is
quoted for you, so `--gin.MODEL_DIR=/tmp/run` works); `--gin_bindings` takes whole binding
lines. Every gin error a user can make becomes an `ImpError` naming the binding and the
nearest valid names.
"""

import ast
import inspect
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import gin

from imp.errors import ImpError, did_you_mean

# The checkout's gin/ folder (imp is installed editable from a clone; see README).
PACKAGE_GIN_DIR = Path(__file__).resolve().parent.parent / "gin"

_MACRO_REFERENCE = re.compile(r"%([A-Za-z_][A-Za-z0-9_.]*)")
_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# gin's second file reader reads an include 'runs/demo.gin' as module `runs`, file `demo.gin`,
# and crashes when the working directory holds a folder of that name (the demo's own `runs/`).
# Files are found on the search paths only.
gin.config._FILE_READERS[:] = [(open, os.path.isfile)]


def resolve_gin_file(name: str, search_paths: Sequence[str] = ()) -> Path:
    """Finds a gin file as given, under each search path, then under the package's gin/."""
    candidates = [Path(name)]
    for root in [*search_paths, PACKAGE_GIN_DIR]:
        candidates += [Path(root) / name, Path(root) / f"{name}.gin"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    roots = ", ".join(str(r) for r in [*search_paths, PACKAGE_GIN_DIR])
    raise ImpError(f"gin file '{name}' not found (looked as given and under: {roots})")


def flag_to_binding(name: str, value: str) -> str:
    """`--gin.NAME=VALUE` -> `NAME = VALUE`, quoting a bare string such as a path."""
    if not name:
        raise ImpError(f"malformed gin flag '--gin.={value}': expected --gin.NAME=VALUE")
    return f"{name} = {_quote_if_bare(value)}"


def _quote_if_bare(value: str) -> str:
    text = value.strip()
    if text.startswith(("@", "%", "(", "[", "{", "'", '"')):
        return text  # a gin reference, macro or Python literal: gin parses it (or says why)
    try:
        ast.literal_eval(text)
        return text
    except (ValueError, SyntaxError):
        return repr(text)


def parse(
    gin_files: Iterable[str] = (),
    bindings: Iterable[str] = (),
    search_paths: Sequence[str] = (),
) -> None:
    """Clears gin, then parses the files and bindings in order (later ones override)."""
    gin.clear_config()
    for root in [*search_paths, PACKAGE_GIN_DIR]:
        gin.add_config_file_search_path(str(root))
    texts = []
    for name in gin_files:
        path = resolve_gin_file(name, search_paths)
        texts.append(path.read_text())
        _parse_or_explain(lambda p=path: gin.parse_config_file(str(p)), f"gin file {path}")
    known_macros = _defined_macros() | {m for t in texts for m in _MACRO_REFERENCE.findall(t)}
    for binding in bindings:
        _check_macro(binding, known_macros)
        _parse_or_explain(lambda b=binding: gin.parse_config(b), f"gin binding '{binding}'")


def _defined_macros() -> set[str]:
    return {
        selector for selector, configurable in gin.config._CONFIG if configurable == "gin.macro"
    }


def _check_macro(binding: str, known_macros: set[str]) -> None:
    """A binding `NAME = V` with no dot sets a macro; a typo would be silently ignored."""
    name = binding.split("=", 1)[0].strip()
    if "." in name or "/" in name or not _BARE_WORD.match(name) or name in known_macros:
        return
    raise ImpError(
        f"gin binding '{binding}': unknown macro '{name}'" + did_you_mean(name, known_macros)
    )


def _parse_or_explain(parse_fn, where: str) -> None:
    # gin logs an ERROR for every search path an include is not found under, even when a
    # later one has it; failures that matter surface as exceptions below.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        parse_fn()
    except ImpError:
        raise
    except (ValueError, SyntaxError, TypeError, ImportError) as e:
        raise ImpError(f"{where}: {_explain(e)}") from None
    except Exception as e:  # noqa: BLE001 - gin surfaces tokenizer errors of several kinds
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImpError(f"{where}: malformed binding ({first})") from None
    finally:
        root.setLevel(level)


def _explain(error: Exception) -> str:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    unknown_configurable = re.search(r"No configurable matching '([^']+)'", message)
    if unknown_configurable:
        name = unknown_configurable.group(1)
        return f"unknown configurable '{name}'" + did_you_mean(name, configurable_names())
    unknown_parameter = re.search(
        r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message
    )
    if unknown_parameter:
        configurable, parameter = unknown_parameter.groups()
        return f"'{configurable}' has no parameter '{parameter}'" + did_you_mean(
            parameter, parameter_names(configurable)
        )
    return message


def configurable_names() -> list[str]:
    """Short names of every registered configurable."""
    return [selector.split(".")[-1] for selector, _ in gin.config._REGISTRY.items()]


def parameter_names(configurable: str) -> list[str]:
    """Parameter names of the configurable registered under `configurable`."""
    try:
        info = gin.config._REGISTRY.get_match(configurable)
    except (KeyError, ValueError):
        return []
    if info is None:
        return []
    try:
        return list(inspect.signature(info.wrapped).parameters)
    except (TypeError, ValueError):
        return []
