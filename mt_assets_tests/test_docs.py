"""The docs: README.md (the front page) and docs/*.md (one page per topic).

Every relative link in them, Markdown `[text](target)`, `[label]: target` or HTML `<a href>` /
`<img src>`, must name a file inside this repository, and every `#anchor` (on the same page or after
`file.md`) a heading of that page, slugged as GitHub does. Links in code (fenced blocks, inline code)
are text, not links. http(s):, mailto: and other schemes are not checked. README.md stays a front
page: at most 250 lines.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+).+?\1")
_MD_LINK = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        m = _FENCE.match(line)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            continue
        if fence is None:
            out.append((number, line))
    return out


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link on the page."""
    found = []
    for number, line in _prose_lines(page.read_text()):
        line = _INLINE_CODE.sub("", line)
        for pattern in (_MD_LINK, _REF_DEF, _HTML_LINK):
            for m in pattern.finditer(line):
                found.append((number, m.group(1).strip("<>")))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of the page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(page.read_text()):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _local(target: str) -> bool:
    return not _SCHEME.match(target) and not target.startswith("//")


def _where(page: Path, number: int) -> str:
    return f"{page.relative_to(ROOT)}:{number}"


def _ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages]


def test_the_docs_are_the_readme_and_docs_pages() -> None:
    assert README.is_file()
    assert len(PAGES) > 1, "docs/ holds no .md page"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_relative_link_names_a_file_in_the_repository(page: Path) -> None:
    broken = []
    for number, target in links(page):
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not _local(target) or not path:
            continue
        resolved = (page.parent / path).resolve()
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{_where(page, number)}: {target!r} leads outside the repository")
        elif not resolved.exists():
            broken.append(f"{_where(page, number)}: {target!r}: no file {resolved.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_anchor_names_a_heading_of_its_page(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if not _local(target) or "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        dest = (page.parent / unquote(path)).resolve() if path else page
        if dest.suffix != ".md" or not dest.is_file():
            continue  # a missing file is the other test's finding
        if unquote(anchor).lower() not in anchors(dest):
            broken.append(
                f"{_where(page, number)}: {target!r}: no heading '#{anchor}' in {dest.relative_to(ROOT)}"
            )
    assert not broken, "\n".join(broken)


def test_readme_links_every_docs_page() -> None:
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for _, t in links(README) if _local(t)}
    unlinked = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"README.md links to no page {', '.join(unlinked)}"


def test_readme_is_a_front_page_of_at_most_250_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md: {lines} lines, at most {README_MAX_LINES}: move a topic into docs/ and link it"
    )


def test_the_link_reader_finds_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A title: with `code`\n"
        "See [a](docs/a.md#part-two \"title\"), <a href='b.md'>b</a> and [c][ref].\n"
        "`[not](a-link.md)`\n"
        "```\n[not](either.md)\n# not a heading\n```\n"
        "[ref]: <c.md>\n"
        "## Part two\n## Part two\n"
    )
    assert [t for _, t in links(page)] == ["docs/a.md#part-two", "b.md", "c.md"]
    assert anchors(page) == {"a-title-with-code", "part-two", "part-two-1"}
