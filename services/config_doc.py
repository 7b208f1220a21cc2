"""``python -m simultrain.config_doc``: the environment-variable tables of docs/CONFIGURATION.md."""

from __future__ import annotations

from pydantic_settings import BaseSettings

from simultrain.shared.settings_doc import settings_table

__all__ = ["configuration_tables"]


def configuration_tables() -> str:
    from simultrain.cloud.settings import CloudSettings
    from simultrain.coordinator.settings import CoordinatorSettings
    from simultrain.edge.settings import EdgeSettings
    from simultrain.netem.settings import NetemSettings

    sections: list[tuple[str, type[BaseSettings]]] = [
        ("Coordinator (`simultrain coordinator`)", CoordinatorSettings),
        ("Cloud (`simultrain cloud`)", CloudSettings),
        ("Edge agent (`simultrain edge`)", EdgeSettings),
        ("Link emulator (`simultrain netem`)", NetemSettings),
    ]
    return "\n\n".join(f"### {title}\n\n{settings_table(cls)}" for title, cls in sections)


if __name__ == "__main__":
    print(configuration_tables())
