"""Every number the course's prose states must come from a stored output, or cite published work.

A *claim* is a number in a markdown cell (of a course notebook or a solution notebook) or in a
slide deck that carries a measurement: a decimal (``84.3``, ``0.81``), a percentage (``97 %``),
a ratio (``2.3×``) or a ``±`` interval. It is *supported* when a number printed in the stored
outputs of its notebook (or written in its code, such as a parameter value) equals it after
rounding to the claim's precision -- a fraction ``0.8429`` supports ``84.3 %`` -- or when its
sentence cites published work: an ``et al.`` reference, a link, or an arXiv identifier.

Not claims: numbers in inline code or fenced code (write versions, shapes and code there), in
LaTeX (``$T = 2$``, derivations), section numbers (``section 4.2``) and integers without a unit
(``3 seeds``, ``6 layers``).

``python -m kd_lib.course.claims`` lists the unsupported claims of every notebook and deck.

Course infrastructure (a test of the notebooks' prose), not taught in a notebook.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Claim", "claims_in", "course_sources", "unsupported_claims"]

REPO = Path(__file__).resolve().parents[2]
# a slide deck quotes the notebooks of its part
DECK_NOTEBOOKS = {
    "part1_foundations": ("01", "02", "03"),
    "part2_transformers": ("04", "05", "06", "07"),
    "part3_applications": ("08", "09", "10", "11", "03", "05", "07"),  # its last slides sum up the course
    "part4_llm": ("12", "13", "14"),
}
NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"
CLAIM = re.compile(
    rf"(?<![\w.\-/#])(±\s?)?({NUMBER})(\s?(?:%|×(?!\s?\d)|percentage points|points|pp\b|M\b))?(?![\w])"
)
CITATION = re.compile(r"et al\.|\]\(https?://|arXiv|arxiv\.org|doi\.org|\(\w+ (?:19|20)\d\d\)")
POINTS = re.compile(r"%|\bpoints?\b|\bpp\b")
OUTPUT_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Claim:
    """A number stated in prose: where, the text as written, its value and decimals.

    Course infrastructure (a test of the notebooks' prose), not taught in a notebook.
    """

    source: str  # the notebook or deck, relative to the repository
    sentence: str
    text: str
    value: float
    decimals: int
    percent: bool
    millions: bool = False  # "11.7 M": supported by a printed 11,720,448 too


def _prose(markdown: str) -> str:
    """Markdown without code, math, link targets, HTML and section numbers."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"(?<!\\)\$[^$\n]+\$", " ", text)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"<!--.*?-->|<[^>\n]+>", " ", text, flags=re.S)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)
    text = re.sub(
        r"(?i)\b(section|sections|§|notebook|notebooks|part|step|steps|table|figure|eq\.)\s+[\d.,–-]+", " ", text
    )
    return text


def _sentences(text: str) -> list[str]:
    """Sentences, list items and table rows (a citation covers the sentence it is in)."""
    out = []
    for line in text.splitlines():
        out += re.split(r"(?<!al\.)(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[A-Z(*_])", line)
    return [s for s in out if s.strip()]


def claims_in(markdown: str, source: str) -> list[Claim]:
    """The claims of one markdown text (sentences that cite published work excluded).

    Course infrastructure (a test of the notebooks' prose), not taught in a notebook.
    """
    found = []
    for sentence in _sentences(_prose(markdown)):
        if CITATION.search(sentence):
            continue
        for m in CLAIM.finditer(sentence):
            interval, number, unit = m.group(1), m.group(2), m.group(3)
            if "." not in number and not unit and not interval:
                continue  # a bare integer: a count, not a measurement
            decimals = len(number.split(".")[1]) if "." in number else 0
            value = float(number.replace(",", ""))
            unit = (unit or "").strip()
            # a bare number in a sentence about points or percentages ("interval [−2.8, +8.9]") may be one too
            percent = unit not in ("", "×", "M") or (unit == "" and POINTS.search(sentence) is not None)
            found.append(Claim(source, sentence.strip(), m.group(0).strip(), value, decimals, percent, unit == "M"))
    return found


def _numbers(cells: list[dict]) -> list[float]:
    """Every number printed in the stored outputs or written in the code of ``cells``."""
    texts = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        texts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            for kind in ("text/plain", "text/markdown", "text/html"):
                texts.append("".join(out.get("data", {}).get(kind, "")))
    return [abs(float(n.replace(",", ""))) for n in OUTPUT_NUMBER.findall("\n".join(texts))]


def _supported(claim: Claim, numbers: list[float]) -> bool:
    tolerance = 0.5 * 10**-claim.decimals + 1e-9
    scales = (1.0, 100.0) if claim.percent else (1.0, 1e-6) if claim.millions else (1.0,)
    return any(abs(n * s - claim.value) <= tolerance for n in numbers for s in scales)


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def course_sources(root: Path = REPO) -> dict[Path, list[Path]]:
    """Each prose source (notebook, solution notebook, slide deck) -> the notebooks backing it.

    Course infrastructure (a test of the notebooks' prose), not taught in a notebook.
    """
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    by_number = {p.name[:2]: p for p in notebooks}
    sources: dict[Path, list[Path]] = {p: [p] for p in notebooks}
    for sol in sorted((root / "notebooks" / "solutions").glob("[0-9][0-9]_solutions.ipynb")):
        sources[sol] = [sol] + ([by_number[sol.name[:2]]] if sol.name[:2] in by_number else [])
    for deck in sorted((root / "slides").glob("*.md")):
        sources[deck] = [by_number[n] for n in DECK_NOTEBOOKS.get(deck.stem, ()) if n in by_number]
    return sources


def unsupported_claims(source: Path, backing: list[Path], root: Path = REPO) -> list[Claim]:
    """The claims of ``source`` that no number of ``backing``'s outputs or code supports.

    Course infrastructure (a test of the notebooks' prose), not taught in a notebook.
    """
    if source.suffix == ".md":
        markdown = source.read_text()
    else:
        markdown = "\n\n".join("".join(c["source"]) for c in _cells(source) if c["cell_type"] == "markdown")
    numbers = [n for path in backing for n in _numbers(_cells(path))]
    name = str(source.relative_to(root))
    return [c for c in claims_in(markdown, name) if not _supported(c, numbers)]


def main() -> int:
    """List every unsupported claim; exit 1 if there is one."""
    total = 0
    for source, backing in course_sources().items():
        for claim in unsupported_claims(source, backing):
            total += 1
            print(f"{claim.source}: {claim.text!r} in: {claim.sentence[:160]}")
    print(f"{total} unsupported claims")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
