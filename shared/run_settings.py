"""Settings classes that carry the run configuration: one setting per declared run key.

The coordinator, and the cloud and the edge when they run without one, hold the run
configuration as one field, ``run`` (the shared `RunConfig`), set key by key: every key of
`RunConfig.declaration` is a setting — a keyword and an environment variable — whose type,
default, bounds and meaning are the declaration's (shared/training/keys.py), never a copy.
The coordinator spells a key as itself (``window`` → ``SIMULTRAIN_COORDINATOR_WINDOW``); the
cloud and the edge spell it ``run_<key>`` (``SIMULTRAIN_CLOUD_RUN_WINDOW``), with the short
names they have always had for three optimizer keys (``run_optimizer``, ``run_lr``,
``run_momentum``). A key added to `RunConfig` is a setting of all three with no edit there.

A name that is neither a setting nor a run key is refused at start-up with the closest valid
one, since a misspelt variable silently ignored would train something else than asked: every
``SIMULTRAIN_COORDINATOR_*`` variable, the cloud's and the edge's ``SIMULTRAIN_*_RUN_*`` ones
and every keyword. `load_settings` reports bad settings one a line, each naming its variable;
pydantic's own message is not shown, as it echoes inputs and an input may be a secret.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.keys import RunKey

__all__ = [
    "SHORT_RUN_NAMES",
    "RunConfigField",
    "RunSettings",
    "SettingsError",
    "load_settings",
    "run_config_field",
    "run_setting_names",
    "serve_from_environment",
]

# The cloud's and the edge's names for three optimizer keys (their variables predate the
# flat ``optimizer_*`` keys and are in deployments: SIMULTRAIN_CLOUD_RUN_LR, …).
SHORT_RUN_NAMES: Mapping[str, str] = {
    "optimizer_name": "optimizer",
    "optimizer_lr": "lr",
    "optimizer_momentum": "momentum",
}


def _validator(cls: type[RunConfig]) -> PlainValidator:
    def validate(value: object) -> RunConfig:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"run configuration: expected an object, got {type(value).__name__}")
        try:
            return cls.from_mapping(value, driver=False)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    return PlainValidator(validate, json_schema_input_type=dict[str, Any])


def _wire(config: RunConfig) -> dict[str, Any]:
    return config.to_mapping()


def run_config_field(cls: type[RunConfig]) -> Any:
    """A pydantic field type holding ``cls``: validated from its flat wire form
    (`RunConfig.from_mapping`, without the driver's own keys; a `ConfigError` naming the key
    becomes a validation error), serialised to it and documented by the JSON schema its
    declaration generates — no key is listed anywhere else."""
    return Annotated[
        cls,
        _validator(cls),
        PlainSerializer(_wire, return_type=dict[str, Any]),
        WithJsonSchema(cls.json_schema()),
    ]


# The run configuration as the services' APIs, stores and settings carry it.
RunConfigField = Annotated[
    RunConfig,
    _validator(RunConfig),
    PlainSerializer(_wire, return_type=dict[str, Any]),
    WithJsonSchema(RunConfig.json_schema()),
]


class RunSettings(BaseSettings):
    """A settings class whose ``run`` field is set key by key (see the module's docstring).

    A subclass declares ``run: RunConfigField = Field(default_factory=RunConfig, ...)`` (or
    `run_config_field` of a `RunConfig` subclass) and, to spell the keys ``run_<key>``,
    ``run_prefix = "run_"`` and ``run_short_names = SHORT_RUN_NAMES``.
    """

    run_prefix: ClassVar[str] = ""
    run_short_names: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments first, then the run keys' variables, then the other variables.
        return (
            init_settings,
            _RunKeySource(settings_cls),
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _gather_run_keys(cls, data: Any) -> Any:
        """Build ``run`` from the run keys given one by one (keywords, or text from the
        environment read by each key's declared type) over ``run`` itself when given; refuse
        a name that is neither a setting nor a run key.

        Each problem names its variable (``SIMULTRAIN_CLOUD_RUN_WINDOW``).
        """
        if not isinstance(data, dict):
            return data
        names = run_setting_names(cls)
        run_cls = _run_class(cls)
        data = dict(data)
        problems = [
            _unknown(cls, str(name), names) for name in data if not _is_name(cls, names, name)
        ]
        given = data.pop("run", None)
        base = given if isinstance(given, run_cls) else None
        wire: dict[str, Any] = {}
        if isinstance(given, Mapping):
            wire.update(given)  # a keyword run={...}: the flat wire form
        elif given is not None and base is None:
            problems.append(f"run: expected a {run_cls.__name__} or a mapping")
        for name in [name for name in data if name in names]:
            value = data.pop(name)
            key = names[name]
            try:
                wire[key.name] = key.parse(value) if isinstance(value, str) else key.check(value)
            except ConfigError as exc:
                problems.append(f"{_variable(cls, name)}: {exc}")
        if not problems and wire:
            try:
                data["run"] = run_cls.from_mapping(wire, base=base, driver=False)
            except ConfigError as exc:  # keys that do not go together (α and the chain)
                reason = str(exc)
                problems.append(
                    reason if "run configuration" in reason else f"run configuration: {reason}"
                )
        elif base is not None:
            data["run"] = base
        if problems:
            raise ValueError("\n".join(problems))  # one a line (load_settings)
        return data


def run_setting_names(settings: type[BaseSettings]) -> dict[str, RunKey]:
    """Each run key's setting name in ``settings`` (the variable without its prefix)."""
    prefix = getattr(settings, "run_prefix", "")
    short: Mapping[str, str] = getattr(settings, "run_short_names", {})
    names = {
        prefix + short.get(key.name, key.name): key
        for key in _run_class(settings).declaration(driver=False)
    }
    clashes = sorted(set(names) & set(settings.model_fields))
    if clashes:  # one variable cannot set two things
        raise TypeError(f"{settings.__name__}: run keys named like settings: {clashes}")
    return names


def _run_class(settings: type[BaseSettings]) -> type[RunConfig]:
    """The `RunConfig` class the settings' ``run`` field holds."""
    annotation = settings.model_fields["run"].annotation
    if not (isinstance(annotation, type) and issubclass(annotation, RunConfig)):
        raise TypeError(f"{settings.__name__}.run must hold a RunConfig")
    return annotation


def _is_name(settings: type[BaseSettings], names: Mapping[str, RunKey], name: object) -> bool:
    return isinstance(name, str) and (name in settings.model_fields or name in names)


def _variable(settings: type[BaseSettings], name: str) -> str:
    return f"{str(settings.model_config.get('env_prefix', '')).upper()}{name.upper()}"


def _unknown(settings: type[BaseSettings], name: str, names: Mapping[str, RunKey]) -> str:
    """One line refusing ``name``, with the closest valid variable."""
    valid = [field for field in settings.model_fields if field != "run"] + list(names)
    close = difflib.get_close_matches(name.lower(), valid, n=1)
    hint = f"; did you mean {_variable(settings, close[0])}?" if close else ""
    return f"{_variable(settings, name)} is not a setting of {settings.__name__}{hint}"


class _RunKeySource(PydanticBaseSettingsSource):
    """The environment variable of every run setting, as text; and every variable under the
    watched prefix that names nothing, so that the settings refuse it.

    Case-insensitive, like the other variables. The watched prefix is the settings' own
    (``SIMULTRAIN_COORDINATOR_``) followed by its run prefix (``SIMULTRAIN_CLOUD_RUN_``).
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every run key at once

    def __call__(self) -> dict[str, Any]:
        settings = self.settings_cls
        prefix = str(settings.model_config.get("env_prefix", "")).upper()
        watched = prefix + str(getattr(settings, "run_prefix", "")).upper()
        names = run_setting_names(settings)
        values: dict[str, Any] = {}
        for variable, text in os.environ.items():
            upper = variable.upper()
            if not upper.startswith(prefix):
                continue
            name = upper[len(prefix) :].lower()
            if name in names or (upper.startswith(watched) and name not in settings.model_fields):
                values[name] = text
        return values


S = TypeVar("S", bound=BaseSettings)


class SettingsError(ConfigError):
    """Invalid settings, described without the offending values (they may be secrets)."""


def load_settings(settings: type[S], **overrides: Any) -> S:
    """``settings`` built from ``overrides`` and the environment.

    Raises `SettingsError` whose message lists each bad setting, one a line, by its variable
    and why, but never the value given: pydantic's own message echoes inputs, and an input
    may be a key.
    """
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    try:
        return settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["loc"]:
                where = ".".join(str(p) for p in error["loc"]).upper()
                problems.append(f"{prefix}{where}: {message}")
            else:  # a whole-settings check names its variables itself
                problems.extend(message.splitlines())
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None


def serve_from_environment(settings: type[S], run: Callable[[S], int], program: str) -> int:
    """A service's ``python -m`` entry: its settings from the environment, then ``run``; a bad
    setting is one line on stderr (``program: …``) and exit status 2, never a traceback."""
    try:
        loaded = load_settings(settings)
    except SettingsError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 2
    return run(loaded)
