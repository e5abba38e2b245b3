"""Checks of configured values against their declared types and ranges, so that a wrong gin value
stops a run in seconds with one line naming the binding, not hours later inside a jitted step.

`check_fields(obj, "ImpModel")` checks every dataclass field of `obj` against its annotation
(`int`, `float`, `bool`, `str`, `X | None`, `tuple[int, int]`, `tuple[str, ...]`, `dict[K, V]`,
`Sequence[X]`, `Callable`); annotations it does not know are not checked.
"""

import collections.abc
import dataclasses
import types
import typing

from imp.errors import ImpError

_SKIPPED = ("parent", "name")  # flax's own Module fields


def check_fields(obj, where: str, scalars_only: bool = False) -> None:
    """Raises an `ImpError` naming `where.field` for the first field whose value does not match
    its annotation (with `scalars_only`, only the fields declared `int`, `float`, `bool`,
    `str`, or one of them or None)."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        if field.name in _SKIPPED or field.name not in hints:
            continue
        if scalars_only and not _scalar(hints[field.name]):
            continue
        value = getattr(obj, field.name)
        expected = describe_mismatch(value, hints[field.name])
        if expected:
            raise ImpError(f"{where}.{field.name} = {value!r}: expected {expected}")


def describe_mismatch(value, annotation) -> str:
    """'' when `value` matches `annotation`, else a description of what was expected."""
    if annotation is typing.Any or isinstance(annotation, typing.TypeVar):
        return ""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        misses = [describe_mismatch(value, a) for a in args]
        return "" if "" in misses else " or ".join(misses)
    if annotation is type(None):
        return "" if value is None else "None"
    if annotation is bool:
        return "" if isinstance(value, bool) else "True or False"
    if annotation is int:
        return "" if _is_int(value) else "an integer"
    if annotation is float:
        return "" if _is_int(value) or isinstance(value, float) else "a number"
    if annotation is str:
        return "" if isinstance(value, str) else "a string"
    if origin is tuple:
        return _tuple_mismatch(value, args)
    if origin in (collections.abc.Sequence, list):
        if not isinstance(value, list | tuple) or isinstance(value, str):
            return "a list"
        return _items_mismatch(value, args[0] if args else typing.Any, "a list")
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            return "a dict"
        if len(args) == 2:
            for key, item in value.items():
                if describe_mismatch(key, args[0]) or describe_mismatch(item, args[1]):
                    return f"a dict of {_name(args[0])} -> {_name(args[1])}"
        return ""
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        return "" if callable(value) else "a callable"
    if isinstance(annotation, type):
        return "" if isinstance(value, annotation) else f"a {annotation.__name__}"
    return ""


def _scalar(annotation) -> bool:
    options = typing.get_args(annotation) or (annotation,)
    return all(a in (int, float, bool, str, type(None)) for a in options)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tuple_mismatch(value, args) -> str:
    if len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, tuple):
            return f"a tuple of {_name(args[0])}s"
        return _items_mismatch(value, args[0], f"a tuple of {_name(args[0])}s")
    if args and len(set(args)) == 1:
        wanted = f"a tuple of {len(args)} {_name(args[0])}s"
    else:
        wanted = f"a tuple ({', '.join(_name(a) for a in args)})" if args else "a tuple"
    if not isinstance(value, tuple) or (args and len(value) != len(args)):
        return wanted
    if any(describe_mismatch(v, a) for v, a in zip(value, args, strict=False)):
        return wanted
    return ""


def _items_mismatch(values, annotation, wanted: str) -> str:
    return wanted if any(describe_mismatch(v, annotation) for v in values) else ""


def _name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def require(condition: bool, message: str) -> None:
    """An `ImpError` with `message` unless `condition` holds."""
    if not condition:
        raise ImpError(message)


def at_least(name: str, value, minimum) -> None:
    """`name` must be a number >= `minimum` (an `ImpError` naming it otherwise)."""
    number = _is_int(value) or isinstance(value, float)
    require(number and value >= minimum, f"{name} = {value!r}: expected a number >= {minimum}")
