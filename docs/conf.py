"""Sphinx configuration for the gpuspawner docs (MyST Markdown)."""

import sys
from pathlib import Path

import autodoc_traits
from sphinx.ext.autodoc import AttributeDocumenter
from sphinx.util import logging
from traitlets import MetaHasTraits, TraitType

here = Path(__file__).parent
sys.path.insert(0, str(here.parent))  # import gpuspawner from this checkout

import gpuspawner  # noqa: E402

project = "gpuspawner"
copyright = "gpuspawner contributors"
release = gpuspawner.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "autodoc_traits",  # the config reference: `autoconfigurable` renders a class's config traits
    "sphinx_copybutton",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
toc_object_entries_show_parents = "hide"  # the page's contents list `gpus`, not `GPUSpawner.gpus`

html_theme = "pydata_sphinx_theme"  # JupyterHub's own; its navbar has the light/dark switch
html_title = f"gpuspawner {release}"
html_static_path = []
html_theme_options = {
    "navbar_align": "left",
    "secondary_sidebar_items": ["page-toc"],
}

# In a `console` block only the commands are copied, less their `$ ` (and their `\` continuation lines),
# not the output; a block without prompts is copied whole.
copybutton_prompt_text = r"\$ |>>> |\.\.\. "
copybutton_prompt_is_regexp = True
copybutton_line_continuation_character = "\\"


logger = logging.getLogger("gpuspawner.docs")
_documenting = {}  # the class an `autoconfigurable` is rendering


def _note_class(app, what, name, obj, options, signature, return_annotation):
    """Note the class whose traits come next; a config trait of its own without help fails `-W`.

    (autodoc-traits would render it as "No help string is provided." after this.
    tests/test_docs.py checks every configurable of the package, documented here or not.)
    """
    if what not in ("class", "configurable"):
        return None
    _documenting["class"] = obj
    if what != "configurable" or not isinstance(obj, MetaHasTraits):
        return None
    for trait_name, trait in obj.class_traits(config=True).items():
        if trait.this_class is obj and not trait.help.strip():
            logger.warning("%s.%s is config=True but has no help: add help=... to document it", name, trait_name)
    return "", None  # not `GPUSpawner(*args, **kwargs)`: it is configured, not called


def _only_its_own_traits(app, what, name, obj, skip, options):
    """A class's section lists the traits it defines, not inherited ones.

    autodoc-traits adds every config trait, inherited too, with the base's static default (GPUSpawner's
    `network_name` would read 'bridge'); those are DockerSpawner's and JupyterHub's to document, and
    the page has a table of the defaults gpuspawner changes.
    """
    if isinstance(obj, TraitType) and obj.this_class is not _documenting.get("class"):
        return True
    return None


class TraitDocumenter(autodoc_traits.TraitDocumenter):
    """autodoc-traits' header, with the default as traitlets writes it in config files.

    autodoc-traits shows ``repr(trait.default_value)``, which a container trait leaves undefined:
    ``cap_drop`` would read ``List()``, not ``List(['ALL'])``.
    """

    def add_directive_header(self, sig):
        trait = self.object
        prefix = f"c.{self.format_name()} = " if trait.metadata.get("config") else ""
        self.options.annotation = f"{prefix}{type(trait).__name__}({trait.default_value_repr()})"
        AttributeDocumenter.add_directive_header(self, sig)


def setup(app):
    app.add_autodocumenter(TraitDocumenter, override=True)
    app.connect("autodoc-process-signature", _note_class)
    app.connect("autodoc-skip-member", _only_its_own_traits)
