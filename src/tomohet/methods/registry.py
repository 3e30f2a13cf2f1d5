"""Every method by name: the CLI, the benchmark runner and the report dispatch through this table and never
need to know which method made a :class:`~.result.Result`.

A method is registered with its kind (``discrete`` or ``continuous``), the inputs it reads (``2d`` tilt
stacks, ``3d`` subtomograms), its options dataclass, what extras it takes (initial maps, a focus mask, a
Dask executor) and one ``fit(dataset, options, *, initial_maps, progress, checkpoint, executor, focus_mask)``.
Options are built from whatever the caller has (:func:`build_options`): fields the options class does not
have, or that were not given (None), keep the method's defaults, so no caller copies options field by field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. ``fit`` returns a :class:`~.result.Result`."""

    name: str
    kind: str  # "discrete" or "continuous"
    inputs: frozenset[str]  # subset of {"2d", "3d"}
    options: type
    fit: Callable[..., Any]
    takes: frozenset[str] = frozenset()  # subset of {"initial_maps", "focus_mask", "executor"}
    aliases: tuple[str, ...] = ()
    description: str = ""


_METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to the table (its name and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in _METHODS and _METHODS[key] is not spec:
            raise ValueError(f"method name {key!r} is already registered")
        _METHODS[key] = spec
    return spec


def registered(name: str) -> MethodSpec | None:
    """The method registered under ``name`` (or alias), None if there is none (does not load the built-ins)."""
    return _METHODS.get(name)


def methods(kind: str | None = None) -> list[MethodSpec]:
    """Registered methods (of one ``kind``), each once, in registration order."""
    _load_builtin()
    seen: dict[str, MethodSpec] = {}
    for spec in _METHODS.values():
        if kind is None or spec.kind == kind:
            seen.setdefault(spec.name, spec)
    return list(seen.values())


def get_method(name: str, kind: str | None = None, input_kind: str | None = None) -> MethodSpec:
    """The method called ``name`` (or an alias); a one-line :class:`InputError` naming ``--method`` when it is
    unknown, of another kind, or does not read ``input_kind`` data (``2d`` / ``3d``)."""
    _load_builtin()
    spec = _METHODS.get(name)
    names = ", ".join(s.name for s in methods(kind))
    if spec is None or (kind is not None and spec.kind != kind):
        raise InputError(None, f"unknown method {name!r}; expected one of {names}", "--method")
    if input_kind is not None and input_kind not in spec.inputs:
        fits = ", ".join(s.name for s in methods(kind) if input_kind in s.inputs)
        what = "3D subtomograms" if input_kind == "3d" else "2D tilt-series stacks"
        raise InputError(None, f"{spec.name} does not read {what}; use {fits}", "--method")
    return spec


def options_from(options_cls: type, **given: Any) -> Any:
    """An options dataclass from the keyword arguments that are fields of it and not None (None = its default)."""
    fields = {f.name for f in dataclasses.fields(options_cls)}
    return options_cls(**{k: v for k, v in given.items() if k in fields and v is not None})


def build_options(spec: MethodSpec, **given: Any) -> Any:
    """``spec.options(...)`` from the keyword arguments that are fields of it and not None."""
    return options_from(spec.options, **given)


def fit(
    spec: MethodSpec, dataset, options: Any, *, initial_maps=None, progress=None, checkpoint=None, executor=None,
    focus_mask=None,
):  # fmt: skip
    """Run ``spec`` on ``dataset``; an :class:`InputError` naming the option when it takes no initial maps, focus
    mask or executor but one was given."""
    for name, value in (("initial_maps", initial_maps), ("focus_mask", focus_mask)):
        if value is not None and name not in spec.takes:
            flag = {"initial_maps": "--map", "focus_mask": "--focus-mask"}[name]
            raise InputError(None, f"{spec.name} does not take {flag}", flag)
    extras = {"initial_maps": initial_maps, "focus_mask": focus_mask, "executor": executor}
    kwargs = {k: v for k, v in extras.items() if k in spec.takes}
    return spec.fit(dataset, options, progress=progress, checkpoint=checkpoint, **kwargs)


_LOADED = [False]


def _load_builtin() -> None:
    """Register the built-in methods on first use (their modules import this one)."""
    if _LOADED[0]:
        return
    _LOADED[0] = True
    from . import builtin, landscape  # noqa: F401  (discrete, then continuous methods)

    landscape.load_builtin()
