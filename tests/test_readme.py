"""The README's set-up comes first; docs/CONFIGURATION.md's tables are the settings classes'."""

from __future__ import annotations

import re
from pathlib import Path

from simultrain.config_doc import configuration_tables

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATION = ROOT / "docs" / "CONFIGURATION.md"


def test_configuration_tables_match_the_settings_classes() -> None:
    text = CONFIGURATION.read_text()
    match = re.search(r"<!-- config:begin -->\n(.*)\n<!-- config:end -->", text, re.S)
    assert match is not None, "docs/CONFIGURATION.md lost its configuration markers"
    assert match.group(1).strip() == configuration_tables().strip(), (
        "docs/CONFIGURATION.md's configuration tables are stale: run "
        "`python -m simultrain.config_doc` and paste its output between the markers"
    )


def test_the_two_setup_commands_come_first() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_points_at_the_configuration_and_the_results() -> None:
    """The README stays short: the tables live in docs/, and the README links to them."""
    readme = (ROOT / "README.md").read_text()
    assert "<!-- config:begin -->" not in readme
    assert "(docs/CONFIGURATION.md)" in readme and "(docs/RESULTS.md" in readme
