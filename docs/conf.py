"""Sphinx configuration of the course website (built by `make site`, i.e. scripts/build_site.py).

The site is built from the committed, executed notebooks without re-executing them, and offline:
the theme (furo) and MathJax (sphinx-mathjax-offline) come from pip packages, nothing is fetched
at build time or by the browser.
"""

# --- the ONE place to change the repository's address ------------------------------------------
# Used for the "Open in Colab" / "Launch on Binder" links on every notebook page, for the
# commented set-up cell injected at the top of each notebook page, and by
# scripts/colab_cell.py (which can add the same set-up cell to notebooks/*.ipynb).
repo_url = "https://github.com/kd-course/kd-course"
repo_branch = "main"
# ------------------------------------------------------------------------------------------------

project = "kd-course"
author = "the kd-course authors"
copyright = "the kd-course authors, MIT licence"
release = "0.1.0"

extensions = [
    "myst_nb",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 shipped in the pip package, copied into _static/mathjax
]

# the notebooks are shown exactly as committed: never executed here
nb_execution_mode = "off"
# ipywidgets would load require.js and the widget manager from a CDN; the static figures next to
# each widget show the same thing, so the widget views are left out
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_merge_streams = True

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "html_image"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "conf.py"]
root_doc = "index"

html_theme = "furo"
html_title = "kd-course · knowledge distillation, tested and offline"
html_static_path = []
html_extra_path = ["_extra"]  # the slide decks (self-contained HTML), copied as they are
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {"navigation_with_keys": True}
