"""Build argparse flags from the configuration dataclasses and read them back."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from drmgf.config import TrainConfig


def _base_type(hint: Any) -> type:
    """``int | None`` -> int; plain types pass through."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str,
                        choices: dict[str, list[str]] | None = None) -> None:
    """One ``--field-name`` flag per field of ``cls``, with the field's help and default."""
    group = parser.add_argument_group(title, (cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = _base_type(hints[f.name])
        if kind is bool:
            group.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        default = f.default
        shown = "" if default is None else f" (default: {default})"
        group.add_argument(flag, dest=f.name, type=kind, default=default, metavar=f.name.upper(),
                           choices=(choices or {}).get(f.name), help=help_text + shown)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Collect the parsed flags into a ``TrainConfig``."""
    sections = {}
    for section in dataclasses.fields(TrainConfig):
        sub_cls = section.default_factory  # type: ignore[misc]
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(sub_cls())}
        sections[section.name] = sub_cls(**values)
    return TrainConfig(**sections)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """All flags of ``drmgf train``, grouped by configuration section."""
    for section in dataclasses.fields(TrainConfig):
        sub_cls = section.default_factory  # type: ignore[misc]
        add_dataclass_flags(parser, sub_cls, section.name)
