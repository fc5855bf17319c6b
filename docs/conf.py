"""Sphinx configuration of the slapnode manual (MyST Markdown pages; `make docs`, `make man`)."""
from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

project = "slapnode"
author = "the slapnode developers"
copyright = "slapnode developers, GPL-3.0-or-later"
release = version = "0.1"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "slapos_reference",  # docs/_ext: commands, configuration keys and exit codes, from the code
]
source_suffix = {".md": "markdown"}
myst_enable_extensions = ["deflist", "colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "README.md"]
root_doc = "index"
language = "en"

# the manual is read offline too: no theme or asset from the network
html_theme = "alabaster"
html_title = "slapnode manual"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}

# man pages: slapos(1) and one per command group, from the generated command reference
man_pages = [
    (f"reference/generated/{name}", name, description, [author], 1)
    for name, _group, description in __import__("slapos_reference").groups()
] + [("reference/generated/configuration", "slapos.cfg", "configuration of a slapnode node, proxy and client",
      [author], 5)]
man_show_urls = False


# Warnings are errors (`make docs` runs sphinx-build -W), except two that are about looks, not
# correctness: a heading level skipped (H1 → H3) and a code block whose language Pygments does not
# know (it is shown as plain text). Broken links, missing pages and bad directives stay errors.
suppress_warnings = ["myst.header", "misc.highlighting_failure"]
