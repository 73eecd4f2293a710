"""The repository stands alone: code cites docs/ sections that exist, never a file outside it.

Checked over python/, tests/, benches/, rust/ and README.md:

* no relative path that leaves the repository (e.g. ``../shared/...``);
* every ``§N`` cites a heading that carries ``§N``: in the ``docs/<page>.md`` named before it
  on the same line, else in ``docs/contract.md`` (the page every bare ``§N`` refers to);
  ``docs/<page>.md decision N`` and ``"Product decisions"`` cite headings of that page too;
* no citation of the old out-of-repository specification remains.

The docs themselves: every page is in the MkDocs nav and every ``page.md#anchor`` link
between pages resolves (``mkdocs build --strict`` checks the same when MkDocs is installed).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

import repo_paths

ROOT = repo_paths.ROOT
DOCS = ROOT / "docs"
SCANNED = ("python", "tests", "benches", "rust", "README.md")
SKIP_DIRS = {"__pycache__", "target", ".hypothesis", ".pytest_cache", ".mypy_cache"}
SKIP_SUFFIXES = {".so", ".pyd", ".onnx", ".npy", ".npz", ".pt", ".pyc"}

# Built from parts so that this file never matches its own patterns (nor the one-off rewrite
# of the old citations).
_OLD_NAME = "SP" + "EC"
OLD_CITATION = re.compile(rf"\b{_OLD_NAME}\b")
# Golden data written by the reference-side generator: its free-text notes are data, not
# citations, and must stay byte-identical.
GOLDEN_DATA = ROOT / "tests" / "data"
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
DOC_REF = re.compile(r"docs/([\w.-]+\.md)")
DECISION_REF = re.compile(r"docs/([\w.-]+\.md)\s+decision\s+(\d+)")
PRODUCT_DECISIONS_REF = re.compile(r"docs/([\w.-]+\.md)\s+\"Product decisions\"")
UP_PATH = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-][\w./-]*)")
DEFAULT_PAGE = "contract.md"


def scanned_files(root: Path = ROOT) -> Iterator[Path]:
    """Every text file of the scanned parts of the repository."""
    for part in SCANNED:
        path = root / part
        if path.is_file():
            yield path
            continue
        for f in sorted(path.rglob("*")):
            if (
                f.is_file()
                and not SKIP_DIRS.intersection(f.parts)
                and f.suffix not in SKIP_SUFFIXES
            ):
                yield f


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def heading_keys(markdown: str) -> tuple[set[str], set[str], set[str]]:
    """(§ numbers, decision numbers, heading texts) of a page's headings."""
    sections: set[str] = set()
    decisions: set[str] = set()
    titles: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip()
        titles.add(title)
        sections.update(SECTION.findall(title))
        decisions.update(re.findall(r"\bDecision (\d+)\b", title))
    return sections, decisions, titles


def page_keys(page: str, docs: Path = DOCS) -> tuple[set[str], set[str], set[str]] | None:
    path = docs / page
    if not path.is_file():
        return None
    return heading_keys(path.read_text(encoding="utf-8"))


def citation_problems(text: str, where: str, docs: Path = DOCS) -> list[str]:
    """Citations in ``text`` (a file named ``where``) that the docs cannot resolve."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in SECTION.finditer(line):
            refs = DOC_REF.findall(line[: m.start()])
            page = refs[-1] if refs else DEFAULT_PAGE
            keys = page_keys(page, docs)
            if keys is None:
                problems.append(f"{where}:{n}: cites docs/{page}, which does not exist")
            elif m.group(1) not in keys[0]:
                problems.append(f"{where}:{n}: docs/{page} has no heading §{m.group(1)}")
        for page, number in DECISION_REF.findall(line):
            keys = page_keys(page, docs)
            if keys is None or number not in keys[1]:
                problems.append(f"{where}:{n}: docs/{page} has no heading 'Decision {number}'")
        for page in PRODUCT_DECISIONS_REF.findall(line):
            keys = page_keys(page, docs)
            if keys is None or "Product decisions" not in keys[2]:
                problems.append(f"{where}:{n}: docs/{page} has no 'Product decisions' heading")
    return problems


def outside_paths(text: str, path: Path, root: Path = ROOT) -> list[str]:
    """Relative paths in ``text`` that resolve outside the repository from ``path``."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in UP_PATH.finditer(line):
            target = (path.parent / m.group(1)).resolve()
            if not target.is_relative_to(root):
                problems.append(f"{path.relative_to(root)}:{n}: {m.group(1)} leaves the repository")
    return problems


def old_citations(text: str, where: str) -> list[str]:
    return [
        f"{where}:{n}: {line.strip()[:100]}"
        for n, line in enumerate(text.splitlines(), 1)
        if OLD_CITATION.search(line)
    ]


def slug(title: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (its default slugify)."""
    title = re.sub(r"[`*]", "", title)
    value = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


# --- the repository -----------------------------------------------------------------------------


def _texts() -> list[tuple[Path, str]]:
    return [(p, t) for p in scanned_files() if (t := read_text(p)) is not None]


def test_no_path_outside_the_repository() -> None:
    problems = [msg for path, text in _texts() for msg in outside_paths(text, path)]
    assert not problems, "\n".join(problems)


def test_every_section_citation_has_a_heading() -> None:
    this_file = Path(__file__).resolve()  # its examples cite missing sections on purpose
    problems = [
        msg
        for path, text in _texts()
        if path.resolve() != this_file
        for msg in citation_problems(text, str(path.relative_to(ROOT)))
    ]
    assert not problems, "\n".join(problems)


def test_no_citation_of_the_old_specification() -> None:
    problems = [
        msg
        for path, text in _texts()
        if not path.is_relative_to(GOLDEN_DATA)
        for msg in old_citations(text, str(path.relative_to(ROOT)))
    ]
    assert not problems, "\n".join(problems)


def test_readme_points_to_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/contract.md" in readme
    assert "mkdocs serve" in readme


# --- the docs -----------------------------------------------------------------------------------


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$", config, re.MULTILINE))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == nav


def test_links_between_pages_resolve() -> None:
    anchors = {
        p.name: {slug(t) for t in heading_keys(p.read_text(encoding="utf-8"))[2]}
        for p in DOCS.glob("*.md")
    }
    problems = []
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md)?(?:#([\w-]+))?\)", text):
            name = target or page.name
            if name not in anchors:
                problems.append(f"{page.name}: link to missing page {name}")
            elif anchor and anchor not in anchors[name]:
                problems.append(f"{page.name}: {name} has no anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_contract_headings_are_unique() -> None:
    text = (DOCS / "contract.md").read_text(encoding="utf-8")
    numbers = [
        n for line in text.splitlines() if line.startswith("#") for n in SECTION.findall(line)
    ]
    assert len(numbers) == len(set(numbers)), sorted(n for n in numbers if numbers.count(n) > 1)


# --- the checks can fail --------------------------------------------------------------------------


@pytest.fixture
def fake_docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "contract.md").write_text(
        "# Title\n## Product decisions\n### Decision 4: streams\n## §2 Ops\n### §2.4 Round\n"
        "```\n# §9 inside a code block is not a heading\n```\n",
        encoding="utf-8",
    )
    return docs


def test_citation_check_flags_missing_sections(fake_docs: Path) -> None:
    ok = 'see docs/contract.md §2.4, §2 and docs/contract.md decision 4, "Product decisions"'
    assert citation_problems(ok, "f.py", fake_docs) == []
    assert citation_problems('docs/contract.md "Product decisions" 2(a)', "f", fake_docs) == []
    assert len(citation_problems("docs/contract.md §2.5", "f.py", fake_docs)) == 1
    assert len(citation_problems("docs/contract.md §2.4, §3.1", "f.py", fake_docs)) == 1
    assert len(citation_problems("(§9)", "f.py", fake_docs)) == 1
    assert len(citation_problems("docs/other.md §2", "f.py", fake_docs)) == 1
    assert len(citation_problems("docs/contract.md decision 5", "f.py", fake_docs)) == 1


def test_outside_path_check(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    source = tmp_path / "pkg" / "mod.py"
    assert outside_paths("see ../README.md", source, tmp_path) == []
    up = "../"  # joined at run time: this file must not contain the paths it tests
    assert len(outside_paths(f"see {up}{up}shared/notes.md", source, tmp_path)) == 1
    assert len(outside_paths(f"`{up}shared/x.md`", tmp_path / "README.md", tmp_path)) == 1


def test_old_citation_check() -> None:
    name = _OLD_NAME
    cited = (f"{name} §2.2", f"({name}.md §1.3)", f"{name} decision 4", f"float32, {name}")
    for line in cited:
        assert old_citations(line, "f") != [], line
    assert old_citations("docs/contract.md §2.2, the specification", "f") == []


def test_slug_matches_markdown_toc() -> None:
    assert (
        slug("§2.2 Inputs and the re-quantization rule") == "22-inputs-and-the-re-quantization-rule"
    )
    assert slug("§3.8 Brevitas / QONNX Quant") == "38-brevitas-qonnx-quant"
    assert slug("Decision 2: the same integer outputs") == "decision-2-the-same-integer-outputs"
