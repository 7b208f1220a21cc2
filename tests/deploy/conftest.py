"""Fixtures for the tests of the deployment artifacts (docs/DEPLOY.md).

No Docker engine, cluster or systemd instance runs here, so each artifact is validated by the
tools that would reject it first (see deploy_checks.py), and the compose topology is run as
local processes. A tool that is missing fails the test that needs it, with the command that
installs it: these validations must never skip silently.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from deploy_checks import REPO_ROOT, find_tool


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """``tool("kubectl")``: the path of an external validator, or a failed test."""
    return find_tool


@pytest.fixture
def broken_copy(tmp_path: Path) -> Callable[..., Path]:
    """Copy a repository file into ``tmp_path`` with one edit, which must apply exactly once.

    ``broken_copy("docker/Dockerfile", old, new)``; ``name=`` renames the copy. Asserting the
    edit applied keeps a break test from passing because it broke nothing.
    """

    def make(relative: str, old: str, new: str, *, name: str | None = None) -> Path:
        source = REPO_ROOT / relative
        text = source.read_text("utf-8")
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {relative}"
        target = tmp_path / (name or source.name)
        target.write_text(text.replace(old, new), "utf-8")
        shutil.copymode(source, target)
        return target

    return make
