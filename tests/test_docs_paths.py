"""The documentation points inside the repository, at things that exist.

Every ``shared/…``, ``services/…`` and ``tests/…`` path a document names exists (and with
``path::Name``, the file defines ``Name``); every relative link and every ``../`` path stays
inside the repository and exists; docs/DESIGN.md's list of sections is its headings, and
every "docs/DESIGN.md §N" cited anywhere in the tree is one of them. No file cites a document
kept outside the repository or an issue number.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(ROOT.glob("docs/*.md")) + [
    ROOT / name for name in ("README.md", "PROTOCOL.md", "SECURITY.md") if (ROOT / name).exists()
]

# A path of the tree, not part of a longer one (``../services/x`` is a relative path, below).
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


# --- the tree cites only itself ----------------------------------------------------------------
#
# Comments, docstrings, help texts and documents cite the repository's own documents
# (docs/*.md, PROTOCOL.md sections) or papers: never a product brief kept outside the
# repository, a style guide, a directory beside the checkout, the numbered fragments the
# papers came in, or a tracker's issue numbers, which mean nothing to a reader of the tree.

SKIPPED_DIRS = {
    ".git", ".venv", "build", "dist", "node_modules", "__pycache__", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis",
}  # fmt: skip
BINARY_SUFFIXES = {".png", ".msgpack", ".npz", ".npy", ".db", ".pt", ".safetensors", ".whl"}
OUTSIDE_CITES = [
    re.compile(r"\b(?:SPEC|STYLE)\.md\b"),
    re.compile(r"(?<![\w.])\.\./shared\b|/work/(?:shared|brief)\b"),
    re.compile(r"\bseeds?\s+0\d\d\b"),  # "seed 003": a fragment's file number, not a paper
    re.compile(r"\b[Ii]ssues?\s+#?\d+\b|\b(?:PR|[Ff]ixes|[Cc]loses|[Ss]ee)\s+#\d+\b|\(#\d+\)"),
]
# The brief's name as a word. In Python source only comments and strings are read, so the
# tests' model-spec constants (``SPEC = get_model_spec(...)``) are code, not citations; an
# option's metavar (``--torch-spec SPEC``) is not a citation either.
SPEC_WORD = re.compile(r"\bSPEC\b")
METAVAR = re.compile(r"--[\w-]+[ =]SPEC\b")


def _tracked_text_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in relative.parts):
            continue
        if not path.is_file() or path.suffix in BINARY_SUFFIXES or path == Path(__file__).resolve():
            continue
        try:
            files.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return files


def _prose(path: Path, text: str) -> list[tuple[int, str]]:
    """The lines of ``text`` a reader reads as prose: a Python file's comments and strings
    (with the line each starts on), any other file whole."""
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return [
        (token.start[0], token.string)
        for token in tokens
        if token.type in (tokenize.COMMENT, tokenize.STRING)
    ]


def outside_citations(path: Path, text: str) -> list[str]:
    found = []
    for line, prose in _prose(path, text):
        hits = [m.group(0) for pattern in OUTSIDE_CITES for m in pattern.finditer(prose)]
        hits += SPEC_WORD.findall(METAVAR.sub("", prose))
        found += [f"{path.relative_to(ROOT)}:{line}: {hit}" for hit in hits]
    return found


def test_no_file_cites_documents_outside_the_repository_or_issue_numbers() -> None:
    found = [hit for path, text in _tracked_text_files() for hit in outside_citations(path, text)]
    assert not found, "cite docs/*.md, PROTOCOL.md or a paper instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("name", "text", "cites"),
    [
        ("a.py", "# the window bound (SPEC step 1)\nx = 1\n", 1),
        ("a.py", '"""Fleets (SPEC.md "Fleets")."""\n', 2),
        ("a.py", "# as issue 5, item 3 asks\n", 1),
        ("a.py", 'HELP = "gradient coding (seed 004), 0 = off"\n', 1),
        ("a.md", "See ../shared/STYLE.md, point 4.\n", 2),
        ("a.md", "Fixes #12; (#7).\n", 2),
        ("a.md", "the study of Issue 10\n", 1),
        # Not citations: code, status codes, anchors, colours, seeds of a run, metavars.
        ("a.py", "SPEC = get_model_spec('imu')\nbuild(run, SPEC)\n", 0),
        ("a.md", "[§1](#1-the-idea), HTTP 404, colour #333, seeds 0 / 1 / 2, seed 0\n", 0),
        ("a.sh", "  --torch-spec SPEC   torch requirement\n", 0),
        ("a.md", "the spec of a session; issues are filed upstream\n", 0),
    ],
)
def test_the_citation_pattern_catches_citations_and_nothing_else(
    name: str, text: str, cites: int
) -> None:
    assert len(outside_citations(ROOT / name, text)) == cites


def test_every_cited_design_section_exists() -> None:
    """A citation "docs/DESIGN.md §3.4" (or "§3.4, §6.2") anywhere in the tree names a heading."""
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    sections = {n for n in re.findall(r"^## (\d+)\. ", design, re.M)}
    sections |= {f"{a}.{b}" for a, b in re.findall(r"^### (\d+)\.(\d+) ", design, re.M)}
    cite = re.compile(r"DESIGN\.md((?:[ ,]*(?:and )?§\d+(?:\.\d+)?(?:[–-]§?\d+(?:\.\d+)?)?)+)")
    missing = []
    for path, text in _tracked_text_files():
        own = path.name == "DESIGN.md"
        for match in [] if own else cite.finditer(text):
            for number in re.findall(r"\d+(?:\.\d+)?", match.group(1)):
                if number not in sections:
                    missing.append(f"{path.relative_to(ROOT)}: §{number}")
    assert not missing, f"cited sections docs/DESIGN.md does not have: {missing}"
