"""Sphinx configuration for the gpuspawner docs (MyST Markdown)."""

import sys
from pathlib import Path

here = Path(__file__).parent
sys.path.insert(0, str(here / "_ext"))
sys.path.insert(0, str(here.parent))  # import gpuspawner from this checkout

import gpuspawner  # noqa: E402

project = "gpuspawner"
copyright = "gpuspawner contributors"
release = gpuspawner.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "gpuspawner_config",  # docs/_ext: the config reference, generated from the traits
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"

html_theme = "alabaster"
html_title = f"gpuspawner {release}"
html_static_path = []
