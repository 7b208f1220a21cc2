"""Markdown tables of the services' settings, so the README's configuration table is generated
from the settings classes themselves and cannot drift from them (a test checks it)."""

from __future__ import annotations

from pydantic_settings import BaseSettings

__all__ = ["settings_table"]


def settings_table(settings: type[BaseSettings]) -> str:
    """Every environment variable of ``settings``, its default and its meaning."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in settings.model_fields.items():
        default = field.default
        if field.is_required():
            shown = "required"
        elif default is None or default == ():
            shown = "—"
        else:
            shown = f"`{default}`"
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name.upper()}` | {shown} | {description} |")
    return "\n".join(rows)
