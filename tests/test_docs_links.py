"""The README and docs/: every link into docs names a section that exists, and the README stays a tour.

Anchors follow GitHub's rule for headings: lower-case, drop every character that is not a letter, a
digit, a space, a hyphen or an underscore, spaces become hyphens, and a repeated heading gets ``-1``,
``-2``, ... Headings and links inside fenced code blocks and code spans do not count.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)) if "](" in m.group(0) else m.group(0), line))
    return lines


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            anchor = github_anchor(match.group(1))
            n = seen.get(anchor, 0)
            seen[anchor] = n + 1
            out.add(anchor if n == 0 else f"{anchor}-{n}")
    return out


def links(path: Path) -> list[tuple[str, str]]:
    """(target file or "", anchor or "") of every relative markdown link of the page."""
    found = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            found.append((file, anchor))
    return found


def test_the_anchor_rule_on_headings_of_this_project():
    assert github_anchor("What did not help, and by how much") == "what-did-not-help-and-by-how-much"
    assert github_anchor("Precision on a CPU: bf16 and fused AdamW") == "precision-on-a-cpu-bf16-and-fused-adamw"
    assert github_anchor("4. The transformer: `transformer_components/`") == "4-the-transformer-transformer_components"
    assert github_anchor("10. The original projects' captioners: ResNet encoders and LSTM decoders") == (
        "10-the-original-projects-captioners-resnet-encoders-and-lstm-decoders")
    assert github_anchor("`tests/mutants.py`: every recorded break") == "testsmutantspy-every-recorded-break"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_link_into_docs_names_a_section_that_exists(page):
    problems = []
    for file, anchor in links(page):
        target = (page.parent / file).resolve() if file else page
        if not target.exists():
            problems.append(f"{file}: no such file")
            continue
        if target.suffix != ".md":
            continue
        if target.parent == ROOT / "docs" and not anchor:
            problems.append(f"{file}: a link into docs must name a section (#anchor)")
        elif anchor and anchor not in anchors(target):
            problems.append(f"{file}#{anchor}: no such section in {target.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_readme_is_a_tour_of_at_most_450_lines_of_at_most_110_characters():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 450
    long = [f"line {i}: {len(line)}" for i, line in enumerate(lines, 1) if len(line) > 110]
    assert not long, long
