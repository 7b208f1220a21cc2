"""The documentation points inside the repository, at things that exist.

Every ``shared/…``, ``services/…`` and ``tests/…`` path a document names exists (and with
``path::Name``, the file defines ``Name``); every relative link and every ``../`` path stays
inside the repository and exists; docs/DESIGN.md's list of sections is its headings, so
"docs/DESIGN.md §N" in a comment always finds its section.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(ROOT.glob("docs/*.md")) + [
    ROOT / name for name in ("README.md", "PROTOCOL.md", "SECURITY.md") if (ROOT / name).exists()
]

# A path of the tree, not part of a longer one (``../shared/x`` is a relative path, below).
NAMED = re.compile(r"(?<![\w./-])((?:shared|services|tests)/[\w./-]*\w)(?:::([A-Za-z_][\w.]*))?")
RELATIVE = re.compile(r"(?<![\w./])(\.\./[\w./-]*\w)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _doc_id(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def _inside(path: Path) -> bool:
    return path == ROOT or ROOT in path.parents


def _defines(source: str, name: str) -> bool:
    """Whether ``source`` defines ``name`` (``Class.attr``: the class, and the attribute in it)."""
    top, _, attr = name.partition(".")
    at_top = re.search(
        rf"^(?:class|def|async def) {re.escape(top)}\b|^{re.escape(top)}\s*[:=]", source, re.M
    )
    if at_top is None:
        return False
    rest = source[at_top.end() :]
    return not attr or re.search(rf"\b{re.escape(attr)}\b", rest) is not None


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_paths_exist(doc: Path) -> None:
    text = doc.read_text()
    missing = []
    for path, name in NAMED.findall(text):
        target = ROOT / path
        if not target.exists():
            missing.append(path)
        elif name and not (target.is_file() and _defines(target.read_text(), name)):
            missing.append(f"{path}::{name}")
    assert not missing, f"{_doc_id(doc)} names what the tree does not hold: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_links_and_relative_paths_stay_inside_and_exist(doc: Path) -> None:
    text = doc.read_text()
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    targets += RELATIVE.findall(text)
    broken = []
    for target in targets:
        path = target.split("#", 1)[0]
        if not path:
            continue  # an anchor in the same document
        resolved = (doc.parent / path).resolve()
        if not (_inside(resolved) and resolved.exists()):
            broken.append(target)
    assert not broken, f"{_doc_id(doc)} points outside the repository or at nothing: {broken}"


def test_design_lists_exactly_its_numbered_sections() -> None:
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    headings = re.findall(r"^## (\d+)\. (.+)$", text, re.M)
    listed = re.findall(r"\[§(\d+) ([^\]]+)\]\(#([\w-]+)\)", text.split("\n## ", 1)[0])
    assert [int(n) for n, _ in headings] == list(range(1, len(headings) + 1))
    assert [(n, title) for n, title, _ in listed] == headings
    for n, title, anchor in listed:  # GitHub's anchor: lower case, punctuation dropped
        expected = re.sub(r"[^\w\- ]", "", f"{n}. {title}".lower()).replace(" ", "-")
        assert anchor == expected, (anchor, expected)
    subsections = re.findall(r"^### (\d+)\.(\d+) ", text, re.M)
    for major, minor in subsections:
        assert major in {n for n, _ in headings}, f"§{major}.{minor} outside a section"
