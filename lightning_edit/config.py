"""The one configuration toolkit of both command lines (edit.py and train.py): YAML files, their merge, and
``--set KEY=VALUE`` typed by the dataclass field the value lands in.

Bottom layer: imports nothing of the package but its errors.

* ``load_yaml``: a YAML mapping file, or a ConfigError naming the file;
* ``deep_merge``: later mappings win key by key, nested sections merged (not replaced);
* ``parse_override``: ``--set KEY=VALUE`` → ``(KEY, SetValue(VALUE))``; the text is kept as written and typed
  when it meets its field (``checked_value``): ``--set v_lr=1e-3`` is the float 0.001 for a float field and
  ``--set dataset=1e-3`` the text ``1e-3`` for a text field;
* ``checked_value``: a value as the field's annotation (int, float, bool, str, dict, list of those, Optional,
  unions), or a ConfigError naming the field and the expected type;
* ``typed_dataclass``: a dataclass from a mapping, every key checked (unknown keys named with the known ones).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, Type, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")
_NULL_TEXT = ("null", "none", "~", "")


def load_yaml(path: Union[str, Path], what: str = "config file") -> dict:
    """A YAML file holding a mapping (an empty file is ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({err.reason}); save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply to be a configuration") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys to values, not a {type(data).__name__}")
    return data


# a family (config.json's model_type) or model name as a file stem of configs/<method>/: letters, digits, "_", "-",
# "." inside; never a path (a model folder's config.json is written by whoever hands the folder over)
_CONFIG_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def is_config_stem(value: object) -> bool:
    """Whether ``value`` may name a file ``configs/<method>/<value>.yaml`` (no separator, no "..", no oddities)."""
    return isinstance(value, str) and bool(_CONFIG_STEM.fullmatch(value)) and ".." not in value


def layered_configs(folder: Path, stems: Sequence[object]) -> dict:
    """``folder/<stem>.yaml`` merged in order for each stem that names a file there; stems that could name a path
    outside ``folder`` (or are not text) are skipped, so no value read from a model folder picks a file."""
    merged: dict = {}
    for stem in stems:
        if is_config_stem(stem) and (folder / f"{stem}.yaml").is_file():
            merged = deep_merge(merged, load_yaml(folder / f"{stem}.yaml"))
    return merged


def deep_merge(base: Mapping, extra: Mapping | None) -> dict:
    """``base`` updated by ``extra``; where both hold a mapping under a key, those are merged the same way."""
    out = copy.deepcopy(dict(base))
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class SetValue(str):
    """The text of a ``--set`` value, typed later by the field it is assigned to (see ``checked_value``)."""


def parse_override(text: str) -> tuple[str, SetValue]:
    """``KEY=VALUE`` of ``--set``; the value must be valid YAML (checked now) and is typed by its field later."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r} (empty KEY)")
    try:
        yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"--set {key}: {value!r} is not a valid value ({type(err).__name__}); "
                                         "write numbers, true/false, text, or lists like [4, 5]") from err
    return key.strip(), SetValue(value)


class SetAction(argparse.Action):
    """``--set KEY=VALUE``, repeatable, for parsers (jsonargparse) that re-check ``type=`` on the collected list."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 (argparse's signature)
        try:
            pair = parse_override(values)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentError(self, str(err)) from err
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), pair])


def apply_overrides(values: dict, overrides: Sequence[tuple[str, Any]]) -> dict:
    """``values`` with each dotted ``KEY`` (``training.lr``) set; a path through a non-section is refused."""
    out = copy.deepcopy(values)
    for key, value in overrides:
        target = out
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        target[parts[-1]] = value
    return out


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def checked_value(name: str, value: Any, annotation: Any, source: str, set_prefix: str = "") -> Any:
    """``value`` as the field's declared type, or a ConfigError naming the field. YAML reads ``1e-3`` as a string:
    numbers written as text are converted; nothing else is guessed (``'no'`` is not a bool, ``2.5`` is not an int,
    ``nan`` is not a number). ``set_prefix`` is the section of the ``--set`` key suggested in the error."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    optional = origin is Union and type(None) in args
    if optional:
        rest = tuple(a for a in args if a is not type(None))
        annotation = rest[0] if len(rest) == 1 else Union[rest]  # type: ignore[assignment]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(value, SetValue):  # command-line text: a text field takes it as written, others read it as YAML
        if optional and value.strip().lower() in _NULL_TEXT:
            return None
        value = str(value) if annotation is str else yaml.safe_load(value)
    if value is None and optional:
        return None

    def refuse(expected: str) -> ConfigError:
        return ConfigError(f"{source}: field '{name}' must be {expected}, got {value!r} ({type(value).__name__}); "
                           f"e.g. --set {set_prefix}{name}=<{expected}>")

    if origin is Union:  # e.g. int | float: the first member that accepts the value, in declared order
        for member in args:
            try:
                return checked_value(name, value, member, source, set_prefix)
            except ConfigError:
                continue
        raise refuse(" or ".join(_type_name(a) for a in args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise refuse(f"a list of {_type_name(args[0])} such as [1, 2]" if args else "a list")
        return [checked_value(f"{name}[{i}]", v, args[0], source, set_prefix) if args else v for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse("a whole number")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise refuse("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise refuse("a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise refuse("text")
        return value
    if (annotation is dict or origin is dict) and not isinstance(value, dict):
        raise refuse("a mapping")
    return value


def typed_dataclass(cls: Type[T], values: Mapping[str, Any], source: str, set_prefix: str = "") -> T:
    """``cls(**values)`` with every value checked against its field's annotation; unknown keys refused by name."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    checked = {k: checked_value(k, v, hints[k], source, set_prefix) for k, v in values.items()}
    try:
        return cls(**checked)
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from err
