"""Build the course's slide decks: slides/*.md → self-contained HTML files, offline.

    python scripts/build_slides.py [--out slides/build] [--notebooks notebooks] [DECK.md ...]

A deck is Markdown (CommonMark + tables + ``$...$`` / ``$$...$$`` maths), one slide per block
between lines holding only ``---``. A paragraph starting with ``Notes:`` becomes speaker notes
(hidden; press ``n``). Two fenced blocks pull real, committed notebook outputs in at build time:

    ```figure
    notebook: 07                 # the notebook's number (or its file name)
    cell: 71e1146f               # a cell id ...
    contains: plt.subplots(      # ... or a text that occurs in exactly one cell's source
    image: 1                     # which PNG of that cell (default 1)
    caption: Reliability diagrams
    width: 80%                   # optional
    ```

    ```output
    notebook: 07
    cell: 1d9d1185
    lines: 1-4                   # optional, 1-based, inclusive
    ```

Nothing is copied into the repository: the PNGs are read from the notebooks' stored outputs and
embedded as data: URIs, and MathJax (from the pip package sphinx-mathjax-offline) is inlined, so
each deck is one HTML file that works from a USB stick without a network. A selector that does
not match exactly one cell, or a cell without the requested output (a notebook not executed
yet), stops the build with a message naming the deck, the notebook and the selector.
"""

from __future__ import annotations

import argparse
import base64
import html
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin

ROOT = Path(__file__).resolve().parent.parent
SLIDES_DIR = ROOT / "slides"
NOTEBOOKS_DIR = ROOT / "notebooks"
MATHJAX_FILE = "tex-svg-full.js"  # one self-contained file: TeX input, SVG output, all extensions


class SlideBuildError(RuntimeError):
    """A deck cannot be built (bad selector, missing output); the message says which and why."""


@dataclass
class Deck:
    source: Path
    title: str
    slides: list[str]  # the HTML of each slide


# ---------------------------------------------------------------------------------------------
# notebook outputs


def find_notebook(ref: str, notebooks_dir: Path) -> Path:
    ref = ref.strip()
    exact = notebooks_dir / ref
    if exact.suffix == ".ipynb" and exact.is_file():
        return exact
    matches = sorted(notebooks_dir.glob(f"{ref}*.ipynb")) if ref else []
    if len(matches) != 1:
        raise SlideBuildError(f"notebook {ref!r}: {len(matches)} matches in {notebooks_dir} (expected one)")
    return matches[0]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def find_cell(nb_path: Path, *, cell_id: str | None = None, contains: str | None = None) -> dict:
    """The one cell of ``nb_path`` with this id, or whose source contains ``contains``."""
    if (cell_id is None) == (contains is None):
        raise SlideBuildError(f"{nb_path.name}: give exactly one of 'cell:' and 'contains:'")
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    if cell_id is not None:
        found = [c for c in cells if c.get("id") == cell_id]
        what = f"id {cell_id!r}"
    else:
        found = [c for c in cells if c.get("cell_type") == "code" and contains in _source(c)]
        what = f"a code cell containing {contains!r}"
    if len(found) != 1:
        raise SlideBuildError(f"{nb_path.name}: {len(found)} cells match {what} (expected exactly one)")
    return found[0]


def _not_executed_hint(nb_path: Path, cell: dict) -> str:
    if cell.get("execution_count") is None:
        return (
            f" - the cell has never been executed: run the notebook first "
            f"(jupyter nbconvert --to notebook --execute --inplace notebooks/{nb_path.name})"
        )
    return ""


def cell_pngs(nb_path: Path, cell: dict) -> list[bytes]:
    pngs = []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        if "image/png" in data:
            b64 = data["image/png"]
            pngs.append(base64.b64decode("".join(b64) if isinstance(b64, list) else b64))
    return pngs


def cell_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            text = out.get("text", "")
        elif "text/plain" in out.get("data", {}) and "image/png" not in out.get("data", {}):
            text = out["data"]["text/plain"]
        else:
            continue
        parts.append("".join(text) if isinstance(text, list) else text)
    return "".join(parts)


def _fields(body: str, where: str) -> dict[str, str]:
    fields = {}
    for line in body.splitlines():
        line = line.split("  #", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise SlideBuildError(f"{where}: expected 'key: value', got {line!r}")
        fields[key.strip()] = value.strip()
    return fields


def _select(fields: dict[str, str], notebooks_dir: Path, where: str) -> tuple[Path, dict]:
    if "notebook" not in fields:
        raise SlideBuildError(f"{where}: 'notebook:' is missing")
    try:
        nb_path = find_notebook(fields["notebook"], notebooks_dir)
        cell = find_cell(nb_path, cell_id=fields.get("cell"), contains=fields.get("contains"))
    except SlideBuildError as err:
        raise SlideBuildError(f"{where}: {err}") from None
    return nb_path, cell


def render_figure(body: str, notebooks_dir: Path, where: str) -> str:
    fields = _fields(body, where)
    nb_path, cell = _select(fields, notebooks_dir, where)
    index = int(fields.get("image", "1"))
    pngs = cell_pngs(nb_path, cell)
    if len(pngs) < index:
        selector = fields.get("cell") or repr(fields.get("contains"))
        raise SlideBuildError(
            f"{where}: {nb_path.name}, cell {selector}: image {index} requested, "
            f"{len(pngs)} PNG output(s) stored{_not_executed_hint(nb_path, cell)}"
        )
    uri = "data:image/png;base64," + base64.b64encode(pngs[index - 1]).decode("ascii")
    caption = fields.get("caption", "")
    style = f' style="width:{html.escape(fields["width"])}"' if "width" in fields else ""
    source = f"notebook {nb_path.stem[:2]}"
    return (
        f'<figure class="nbfig"><img src="{uri}" alt="{html.escape(caption or source)}"{style}>'
        f"<figcaption>{html.escape(caption)}{' · ' if caption else ''}<span class='src'>{source}</span>"
        f"</figcaption></figure>\n"
    )


def render_output(body: str, notebooks_dir: Path, where: str) -> str:
    fields = _fields(body, where)
    nb_path, cell = _select(fields, notebooks_dir, where)
    text = cell_text(cell)
    if not text.strip():
        raise SlideBuildError(
            f"{where}: {nb_path.name}: the selected cell has no text output{_not_executed_hint(nb_path, cell)}"
        )
    lines = text.rstrip("\n").splitlines()
    if "lines" in fields:
        first, _, last = fields["lines"].partition("-")
        lines = lines[int(first) - 1 : int(last or first)]
        if not lines:
            raise SlideBuildError(f"{where}: {nb_path.name}: lines {fields['lines']} are past the output's end")
    return (
        f'<figure class="nbout"><pre>{html.escape(chr(10).join(lines))}</pre>'
        f"<figcaption><span class='src'>output of notebook {nb_path.stem[:2]}</span></figcaption></figure>\n"
    )


# ---------------------------------------------------------------------------------------------
# Markdown → slides


def _math(content: str, options: dict) -> str:
    if options.get("display_mode"):
        return f"\\[{html.escape(content)}\\]"
    return f"\\({html.escape(content)}\\)"


def _markdown(notebooks_dir: Path, where: list[str]) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    dollarmath_plugin(md, renderer=_math, allow_space=True, double_inline=True)
    default_fence = md.renderer.rules["fence"]

    def fence(_renderer, tokens, idx, options, env):
        token = tokens[idx]
        lang = token.info.strip()
        if lang == "figure":
            return render_figure(token.content, notebooks_dir, where[0])
        if lang == "output":
            return render_output(token.content, notebooks_dir, where[0])
        return default_fence(tokens, idx, options, env)

    md.add_render_rule("fence", fence)
    return md


def split_slides(text: str) -> list[str]:
    """Cut a deck at lines holding only ``---`` (outside fenced blocks)."""
    slides, current, fence = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(r"^(`{3,}|~{3,})", stripped)
        if match and (fence is None or stripped.startswith(fence)):
            fence = match.group(1) if fence is None else None
        if stripped == "---" and fence is None:
            slides.append("\n".join(current))
            current = []
        else:
            current.append(line)
    slides.append("\n".join(current))
    return [s for s in slides if s.strip()]


def parse_deck(path: Path, notebooks_dir: Path = NOTEBOOKS_DIR) -> Deck:
    text = path.read_text(encoding="utf-8")
    chunks = split_slides(text)
    if not chunks:
        raise SlideBuildError(f"{path.name}: no slides")
    title_match = re.search(r"^# (.+)$", chunks[0], re.M)
    title = title_match.group(1).strip() if title_match else path.stem
    where = [path.name]
    md = _markdown(notebooks_dir, where)
    slides = []
    for number, chunk in enumerate(chunks, start=1):
        where[0] = f"{path.name}, slide {number}"
        body, _, notes = chunk.partition("\nNotes:")
        rendered = md.render(body)
        if notes.strip():
            rendered += f'<aside class="notes">{md.render(notes.strip())}</aside>\n'
        slides.append(rendered)
    return Deck(path, title, slides)


# ---------------------------------------------------------------------------------------------
# HTML


def mathjax_script() -> str:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or not spec.submodule_search_locations:
        raise SlideBuildError("MathJax not found: pip install sphinx-mathjax-offline (in the dev extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / MATHJAX_FILE
    return path.read_text(encoding="utf-8")


MATHJAX_CONFIG = """window.MathJax = {
  tex: {inlineMath: [['\\\\(', '\\\\)']], displayMath: [['\\\\[', '\\\\]']], processEscapes: false},
  svg: {fontCache: 'global'},
  options: {enableMenu: false},
  startup: {typeset: true}
};"""

CSS = """
:root { --fg: #1d2733; --muted: #5b6b7b; --accent: #1f6feb; --bg: #ffffff; --code: #f3f5f8; }
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; background: #222; color: var(--fg);
  font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; }
.deck { height: 100%; }
.slide { display: none; position: absolute; inset: 0; margin: auto; background: var(--bg);
  width: min(100vw, 177.78vh); height: min(100vh, 56.25vw); padding: 2.8% 5% 3.6% 5%;
  font-size: min(2.1vw, 3.73vh); line-height: 1.32; overflow: hidden; flex-direction: column; }
.slide.current { display: flex; }
.slide > * { flex: 0 0 auto; }
.slide h1 { font-size: 1.9em; margin: 0.1em 0 0.4em; color: var(--accent); }
.slide h2 { font-size: 1.45em; margin: 0 0 0.45em; color: var(--accent); }
.slide h3 { font-size: 1.1em; margin: 0.4em 0 0.2em; }
.slide p, .slide li { margin: 0.25em 0; }
.slide ul, .slide ol { margin: 0.2em 0; padding-left: 1.3em; }
.slide code { background: var(--code); padding: 0 0.2em; border-radius: 3px; font-size: 0.9em; }
.slide pre { background: var(--code); padding: 0.5em 0.7em; border-radius: 5px; font-size: 0.72em;
  line-height: 1.3; overflow: hidden; margin: 0.3em 0; }
.slide pre code { background: none; padding: 0; font-size: 1em; }
.slide table { border-collapse: collapse; font-size: 0.76em; margin: 0.3em 0; }
.slide th, .slide td { border-bottom: 1px solid #d0d7de; padding: 0.15em 0.6em; text-align: left; }
.slide figure { margin: 0.3em 0; text-align: center; }
.slide figure.nbfig { flex: 1 1 0; min-height: 0; display: flex; flex-direction: column; align-items: center; }
.slide figure.nbfig img { flex: 1 1 0; min-height: 0; width: 100%; object-fit: contain; }
.slide figcaption { font-size: 0.62em; color: var(--muted); }
.slide .nbout pre { text-align: left; font-size: 0.6em; }
.slide .math { font-size: 0.95em; }
.slide .cols { display: flex; gap: 1.2em; align-items: flex-start; }
.slide .cols > * { flex: 1; }
.slide aside.notes { display: none; }
body.show-notes .slide aside.notes { display: block; position: absolute; left: 0; right: 0; bottom: 0;
  background: #fff8c5; font-size: 0.6em; padding: 0.4em 1em; max-height: 35%; overflow: auto; }
.counter { position: fixed; right: 0.8em; bottom: 0.5em; color: #aaa; font-size: 14px; z-index: 2; }
.help { position: fixed; left: 0.8em; bottom: 0.5em; color: #888; font-size: 12px; z-index: 2; }
body.overview { background: #ddd; height: auto; }
body.overview .slide { display: flex; position: relative; margin: 1.5em auto; width: 80vw;
  height: 45vw; font-size: 1.68vw; box-shadow: 0 2px 8px rgba(0,0,0,.3); }
@media print {
  @page { size: 1280px 720px; margin: 0; }
  html, body { background: #fff; height: auto; }
  .slide { display: flex !important; position: relative; width: 1280px; height: 720px;
    font-size: 27px; page-break-after: always; }
  .counter, .help { display: none; }
}
"""

JS = """
(function () {
  const slides = Array.from(document.querySelectorAll('.slide'));
  const counter = document.querySelector('.counter');
  let i = 0;
  function fit(slide) {  // shrink wide printed outputs until they fit the slide's width
    slide.querySelectorAll('pre').forEach((pre) => {
      pre.style.fontSize = '';
      let size = parseFloat(getComputedStyle(pre).fontSize);
      while (pre.scrollWidth > pre.clientWidth + 1 && size > 7) { size *= 0.93; pre.style.fontSize = size + 'px'; }
    });
  }
  function show(n) {
    i = Math.max(0, Math.min(slides.length - 1, n));
    slides.forEach((s, k) => s.classList.toggle('current', k === i));
    fit(slides[i]);
    counter.textContent = (i + 1) + ' / ' + slides.length;
    if (location.hash !== '#' + (i + 1)) history.replaceState(null, '', '#' + (i + 1));
  }
  function fromHash() { const n = parseInt(location.hash.slice(1), 10); show(isNaN(n) ? 0 : n - 1); }
  document.addEventListener('keydown', (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    if (['ArrowRight', 'ArrowDown', 'PageDown', ' ', 'Enter'].includes(e.key)) { show(i + 1); e.preventDefault(); }
    else if (['ArrowLeft', 'ArrowUp', 'PageUp', 'Backspace'].includes(e.key)) { show(i - 1); e.preventDefault(); }
    else if (e.key === 'Home') show(0);
    else if (e.key === 'End') show(slides.length - 1);
    else if (e.key === 'o') document.body.classList.toggle('overview');
    else if (e.key === 'n') document.body.classList.toggle('show-notes');
  });
  document.addEventListener('click', (e) => {
    if (document.body.classList.contains('overview') || e.target.closest('a')) return;
    show(e.clientX < window.innerWidth / 3 ? i - 1 : i + 1);
  });
  window.addEventListener('hashchange', fromHash);
  window.addEventListener('resize', () => fit(slides[i]));
  fromHash();
})();
"""


def render_html(deck: Deck, mathjax: str) -> str:
    sections = "\n".join(
        f'<section class="slide" id="slide-{n}" data-n="{n}">\n{body}</section>'
        for n, body in enumerate(deck.slides, start=1)
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="kd-course scripts/build_slides.py from slides/{deck.source.name}">
<title>{html.escape(deck.title)}</title>
<style>{CSS}</style>
<script>{MATHJAX_CONFIG}</script>
<script>{mathjax}</script>
</head>
<body>
<div class="deck">
{sections}
</div>
<div class="counter"></div>
<div class="help">&larr; &rarr; or click: move · o: overview · n: notes · print: one slide per page</div>
<script>{JS}</script>
</body>
</html>
"""


def deck_sources(slides_dir: Path = SLIDES_DIR) -> list[Path]:
    return sorted(p for p in slides_dir.glob("*.md") if p.name.lower() != "readme.md")


def build(out_dir: Path, sources: list[Path] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Build every deck into ``out_dir``; return the HTML files. Raises SlideBuildError."""
    sources = deck_sources() if sources is None else sources
    if not sources:
        raise SlideBuildError("no decks found")
    mathjax = mathjax_script()
    out_dir.mkdir(parents=True, exist_ok=True)
    errors, written = [], []
    for src in sources:
        try:
            deck = parse_deck(src, notebooks_dir)
        except SlideBuildError as err:
            errors.append(str(err))
            continue
        target = out_dir / f"{src.stem}.html"
        target.write_text(render_html(deck, mathjax), encoding="utf-8")
        written.append(target)
    if errors:
        raise SlideBuildError("slides could not be built:\n  " + "\n  ".join(errors))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("decks", nargs="*", type=Path, help="deck sources (default: slides/*.md)")
    parser.add_argument("--out", type=Path, default=SLIDES_DIR / "build")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR)
    args = parser.parse_args(argv)
    try:
        written = build(args.out, args.decks or None, args.notebooks)
    except SlideBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
