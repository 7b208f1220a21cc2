"""The README's configuration tables are the settings classes', and its set-up comes first."""

from __future__ import annotations

import re
from pathlib import Path

from simultrain.config_doc import configuration_tables

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_tables_match_the_settings_classes() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- config:begin -->\n(.*)\n<!-- config:end -->", readme, re.S)
    assert match is not None, "README.md lost its configuration markers"
    assert match.group(1).strip() == configuration_tables().strip(), (
        "README.md's configuration tables are stale: run "
        "`python -m simultrain.config_doc` and paste its output between the markers"
    )


def test_the_two_setup_commands_come_first() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()
