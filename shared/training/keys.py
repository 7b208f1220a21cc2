"""How a run configuration key is declared, once: type, default, bounds and meaning.

A field of `RunConfig` — or of the optimizer and codec settings it holds — is written
``name: Annotated[type, Key("One-line meaning.", ge=0)] = default``. `RunConfig.declaration`
turns those fields into one `RunKey` per flat key (the coordinator's wire form), and every
other form of the run configuration is read from that: the validation (`RunKey.check`),
environment variables and other text (`RunKey.parse`), the coordinator's JSON schema
(`RunKey.json_schema`) and docs/CONFIGURATION.md's tables. Adding a field here is the whole edit:
the coordinator's API, its ``SIMULTRAIN_COORDINATOR_<KEY>`` variable, the cloud's and the edge's
``SIMULTRAIN_CLOUD_RUN_<KEY>`` / ``SIMULTRAIN_EDGE_RUN_<KEY>`` (shared/run_settings.py) and the rows
of docs/CONFIGURATION.md follow. A key that changes training is then read in one place, the run's
assembly (shared/training/assembly.py), which every cloud, edge and in-process run is built by; a
key it does not read says why (``Key.inert``).

This module imports nothing from the project but its errors, so the modules that declare
fields (config, options) can all use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args, get_origin

from simultrain.shared.errors import ConfigError

__all__ = ["Key", "RunKey"]

# Text that means "not given" for an optional key (an environment variable cannot be null).
_NULL_TEXT = frozenset({"", "null"})
_TRUE_TEXT = frozenset({"1", "true", "yes", "on"})
_FALSE_TEXT = frozenset({"0", "false", "no", "off"})
_JSON_TYPES: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True, slots=True)
class Key:
    """A field's meaning and bounds, carried in its ``Annotated`` type."""

    description: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    # Why the run's assembly (shared/training/assembly.py) reads this key nowhere, for a key
    # that changes nothing the builders build; empty for every other key. A test runs each
    # key through the builders and holds them to it.
    inert: str = ""


@dataclass(frozen=True, slots=True)
class RunKey:
    """One flat run configuration key as declared: the only description of it there is."""

    name: str
    kind: type  # bool, int, float or str
    optional: bool  # None is a value (JSON null)
    default: Any
    key: Key
    # Words the key takes besides values of ``kind``: ``int | Literal["auto"]`` is an int
    # key that also takes "auto" (the run's ``window``).
    words: tuple[str, ...] = ()

    @classmethod
    def from_hint(cls, name: str, hint: Any, default: Any) -> RunKey:
        """The key a field ``Annotated[T, Key(...)]`` with that default declares."""
        args = get_args(hint)
        if not args or not isinstance(args[-1], Key):
            raise TypeError(f"run configuration field {name!r} is not declared with a Key")
        key = args[-1]
        kind = args[0]
        members = get_args(kind)
        optional = type(None) in members
        words: tuple[str, ...] = ()
        if members and get_origin(kind) is not Literal:
            literal = [m for m in members if get_origin(m) is Literal]
            if literal:
                words = tuple(w for m in literal for w in get_args(m))
            rest = [m for m in members if m is not type(None) and get_origin(m) is not Literal]
            if len(rest) != 1:
                raise TypeError(f"run configuration field {name!r}: unsupported type {kind!r}")
            (kind,) = rest
        if get_origin(kind) is Literal:  # Literal["sgd", "adam"]: a str with choices
            literals = get_args(kind)
            key = replace(key, choices=tuple(literals))
            kind = str
        if kind not in _JSON_TYPES:
            raise TypeError(f"run configuration field {name!r}: unsupported type {kind!r}")
        if words and (kind is str or not all(isinstance(w, str) for w in words)):
            raise TypeError(f"run configuration field {name!r}: words go with a number type")
        return cls(name, kind, optional, default, key, words)

    @property
    def description(self) -> str:
        return self.key.description

    @property
    def inert(self) -> str:
        """Why the builders do not read this key ("" when they do)."""
        return self.key.inert

    def check(self, value: Any) -> Any:
        """``value`` if it is one of this key's, an int taken for a float; else ConfigError."""
        if value is None:
            if not self.optional:
                raise self._error("must not be null")
            return None
        if isinstance(value, str) and value in self.words:
            return value
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (
            not isinstance(value, self.kind)
            or (self.kind is int and isinstance(value, bool))
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            wanted = self.kind.__name__ + "".join(f" or {w!r}" for w in self.words)
            wanted += " or None" if self.optional else ""
            raise self._error(f"expected {wanted}, got {type(value).__name__} {value!r}")
        key = self.key
        if key.choices and value not in key.choices:
            raise self._error(f"{value!r} is not one of {', '.join(key.choices)}")
        if key.nonempty and not value:
            raise self._error("must not be empty")
        for bound, holds, sign in (
            (key.ge, lambda b: value >= b, "≥"),
            (key.gt, lambda b: value > b, ">"),
            (key.le, lambda b: value <= b, "≤"),
            (key.lt, lambda b: value < b, "<"),
        ):
            if bound is not None and not holds(bound):
                raise self._error(f"must be {sign} {bound:g}, got {value!r}")
        return value

    def parse(self, text: str) -> Any:
        """The value ``text`` spells (an environment variable): checked like `check`.

        For an optional key, an empty text or ``null`` is None.
        """
        stripped = text.strip()
        if self.optional and stripped.lower() in _NULL_TEXT:
            return None
        value: Any = text
        if stripped.lower() in self.words:
            return stripped.lower()
        if self.kind is bool:
            if stripped.lower() not in _TRUE_TEXT | _FALSE_TEXT:
                raise self._error(f"{text!r} is not a boolean (true or false)")
            value = stripped.lower() in _TRUE_TEXT
        elif self.kind is int:
            try:
                value = int(stripped)
            except ValueError:
                raise self._error(f"{text!r} is not an integer") from None
        elif self.kind is float:
            try:
                value = float(stripped)
            except ValueError:
                raise self._error(f"{text!r} is not a number") from None
        return self.check(value)

    def json_schema(self) -> dict[str, Any]:
        """This key as a JSON schema property: type, bounds, default and meaning."""
        schema: dict[str, Any] = {"type": _JSON_TYPES[self.kind]}
        key = self.key
        if key.choices:
            schema["enum"] = list(key.choices)
        for bound, word in (
            (key.ge, "minimum"),
            (key.gt, "exclusiveMinimum"),
            (key.le, "maximum"),
            (key.lt, "exclusiveMaximum"),
        ):
            if bound is not None:
                schema[word] = bound
        if key.nonempty:
            schema["minLength"] = 1
        if self.words:
            schema = {"anyOf": [schema, {"type": "string", "enum": list(self.words)}]}
        if self.optional:
            schema = {"anyOf": [schema, {"type": "null"}]}
        return {**schema, "default": self.default, "description": key.description}

    def _error(self, reason: str) -> ConfigError:
        return ConfigError(f"run configuration {self.name!r}: {reason}")
