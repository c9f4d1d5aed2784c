"""Dagster run config generated from the core's frozen config dataclasses.

The core owns every data-dependent constant (one definition, with the notebook's defaults); this
module mirrors such a dataclass as a `dg.Config` so each value is editable in the launchpad, and
turns the run config back into the core dataclass.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import dagster as dg
import pydantic


def _dagster_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is tuple:  # Dagster config has lists, not tuples
        return list[typing.get_args(annotation)[0]]
    return annotation


def config_class(
    core_cls: type, name: str | None = None, base: type = dg.Config, defaults: dict[str, Any] | None = None
) -> type[dg.Config]:
    """A `dg.Config` subclass (or a `dg.ConfigurableResource` one, `base`: settings every shard step of
    a run must share) with the same fields and defaults as the dataclass `core_cls` (`defaults` replaces
    some, for an asset whose default differs from the library's)."""
    hints = typing.get_type_hints(core_cls)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(core_cls):
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if defaults and field.name in defaults:
            default = defaults[field.name]
        if isinstance(default, tuple):
            default = list(default)
        fields[field.name] = (_dagster_type(hints[field.name]), default)
    model = pydantic.create_model(name or f"{core_cls.__name__}Settings", __base__=base, **fields)
    model.__doc__ = core_cls.__doc__
    return model


def to_core(core_cls: type, config: dg.Config):
    """The core dataclass instance for a run config made by `config_class(core_cls)`."""
    hints = typing.get_type_hints(core_cls)
    values = {}
    for field in dataclasses.fields(core_cls):
        value = getattr(config, field.name)
        if typing.get_origin(hints[field.name]) is tuple:
            value = tuple(value)
        values[field.name] = value
    return core_cls(**values)
