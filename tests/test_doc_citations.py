"""Citations stay inside the repository: every citation of a section of docs/theory.md names a section that
exists, and no file cites a document the repository does not contain."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
FILES = sorted([*ROOT.glob("src/**/*.py"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("benchmarks/**/*.py"),
                *ROOT.glob("benchmarks/**/*.md"), *ROOT.glob("scripts/**/*.py"), *ROOT.glob("tests/**/*.py"),
                ROOT / "README.md"])


def test_theory_sections_cited_in_the_repository_exist():
    headings = [h.strip() for h in re.findall(r"^#+ (.+)$", THEORY.read_text(), re.M)]
    cited = {}
    for path in FILES:
        for section in re.findall(r'docs/theory\.md,\s+"([^"]+)"', path.read_text()):
            cited.setdefault(" ".join(section.split()), path.relative_to(ROOT))
    assert len(cited) >= 8  # the sections of the theory page that the code cites
    for section, path in cited.items():
        assert any(h.startswith(section) for h in headings), f"{path} cites a missing section {section!r}"


def test_no_citation_of_documents_outside_the_repository():
    outside = re.compile(r"\bFRAMEWORK\b|\bSTYLE §|FRAMEWORK\.md|STYLE\.md")
    this_file = Path(__file__).resolve()
    offenders = [str(p.relative_to(ROOT)) for p in FILES if p != this_file and outside.search(p.read_text())]
    assert offenders == []
