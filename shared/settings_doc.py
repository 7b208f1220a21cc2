"""Markdown tables of the services' settings, so docs/CONFIGURATION.md's tables are generated
from the settings classes themselves and cannot drift from them (a test checks it).

A field holding a `RunConfig` (the services' ``run``) is one variable per run key: its rows
are the keys' declaration (shared/training/keys.py), named as the settings spell them
(shared/run_settings.py), not a field list of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings

from simultrain.shared.run_settings import run_setting_names

__all__ = ["setting_names", "settings_table"]


def settings_table(settings: type[BaseSettings]) -> str:
    """Every environment variable of ``settings``, its default and its meaning."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, shown, description in _rows(settings):
        description = description.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name.upper()}` | {shown} | {description} |")
    return "\n".join(rows)


def setting_names(settings: type[BaseSettings]) -> list[str]:
    """The name of every setting, run keys included (the variable without its prefix)."""
    return [name for name, _, _ in _rows(settings)]


def _rows(settings: type[BaseSettings]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in settings.model_fields.items():
        if callable(getattr(field.annotation, "declaration", None)):
            # A RunConfig: a variable per key it declares, named as the settings spell it.
            rows.extend(
                (setting, _shown(key.default), key.description)
                for setting, key in run_setting_names(settings).items()
            )
        elif field.is_required():
            rows.append((name, "required", field.description or ""))
        else:
            rows.append((name, _shown(field.default), field.description or ""))
    return rows


def _shown(default: Any) -> str:
    return "—" if default is None or default == () else f"`{default}`"
