"""What the configuration reference (docs/reference/config.md) cannot check by building.

The reference renders each class's own config traits with autodoc-traits; docs/conf.py fails the
``-W`` build on a documented class's trait without help. Here: every configurable of the package has
help, documented in that page or not (the culler, the dashboard, the ``gpuspawner`` commands), and
the page's table of inherited defaults that gpuspawner changes is what the code does.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from dockerspawner import DockerSpawner
from markdown_it import MarkdownIt
from traitlets import DefaultHandler, HasTraits, Int, Unicode

import gpuspawner

CONFIG_DOC = Path(__file__).resolve().parent.parent / "docs" / "reference" / "config.md"


def configurables() -> list[type]:
    """Every traitlets class defined in the package, all its modules imported."""
    for module in pkgutil.walk_packages(gpuspawner.__path__, "gpuspawner."):
        if not module.name.endswith("__main__") and ".migrations" not in module.name:  # scripts, not modules
            importlib.import_module(module.name)
    found, todo = [], [HasTraits]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.split(".")[0] == "gpuspawner" and sub not in found:
                found.append(sub)
    return found


def without_help(cls: type) -> list[str]:
    """The config traits ``cls`` defines (not inherits) whose help is empty."""
    return [
        f"{cls.__module__}.{cls.__name__}.{name}"
        for name, trait in cls.class_traits(config=True).items()
        if trait.this_class is cls and not trait.help.strip()
    ]


def test_every_config_trait_of_the_package_has_help():
    classes = configurables()
    names = {cls.__name__ for cls in classes}
    assert {"GPUSpawner", "SwarmGPUSpawner", "GPUCuller", "GPUDashboard", "SSHGateway", "LabCommand"} <= names
    assert [name for cls in classes for name in without_help(cls)] == [], "add help=... to document these"


def test_a_config_trait_without_help_is_found_and_an_inherited_one_is_not_blamed_on_the_subclass():
    class Base(HasTraits):
        documented = Int(1, help="Says what it is.").tag(config=True)
        bare = Unicode("").tag(config=True)
        internal = Unicode("")  # not config: not the reference's business

    class Sub(Base):
        also_bare = Int(0, help="  ").tag(config=True)

    assert without_help(Base) == [f"{__name__}.Base.bare"]
    assert without_help(Sub) == [f"{__name__}.Sub.also_bare"]


# --- The table of inherited defaults that GPUSpawner changes ------------------------------------


def changed_defaults_table(text: str) -> list[tuple[str, str, str]]:
    """The rows of the ``{table}`` titled "Inherited options whose default differs", as code spans."""
    md = MarkdownIt("commonmark").enable("table")
    fence = next(
        (t for t in md.parse(text) if t.type == "fence" and t.info.startswith("{table} Inherited options")), None
    )
    assert fence is not None, "no {table} 'Inherited options whose default differs'"
    rows, row = [], []
    for t in md.parse(fence.content):
        if t.type == "tr_open":
            row = []
        elif t.type == "inline":
            cell = t.children or []
            row.append(cell[0].content if len(cell) == 1 and cell[0].type == "code_inline" else t.content)
        elif t.type == "tr_close":
            rows.append(tuple(row))
    return rows[1:]  # less the header


def shown(value) -> str:
    """A default as the table shows it: a function by its name, anything else as its repr."""
    return getattr(value, "__name__", type(value).__name__) if callable(value) else repr(value)


def test_the_changed_defaults_table_is_what_gpuspawner_overrides():
    cls = gpuspawner.GPUSpawner
    own = cls.class_own_traits()
    overridden = [h.trait_name for h in vars(cls).values() if isinstance(h, DefaultHandler)]
    ours, theirs = cls(), DockerSpawner()  # bare: no hub, no config
    expected = [
        (name, shown(getattr(theirs, name)), shown(getattr(ours, name)))
        for name in overridden
        if name not in own and shown(getattr(theirs, name)) != shown(getattr(ours, name))
    ]
    assert changed_defaults_table(CONFIG_DOC.read_text()) == expected


def test_the_table_reader_reads_the_rows_and_fails_without_the_table():
    text = (
        "# X\n\n```{table} Inherited options whose default differs\n| Option | A | B |\n|---|---|---|\n"
        "| `remove` | `False` | `True` |\n| `options_form` | `''` | `render_profile_form` |\n```\n"
    )
    assert changed_defaults_table(text) == [("remove", "False", "True"), ("options_form", "''", "render_profile_form")]
    with pytest.raises(AssertionError, match="no {table}"):
        changed_defaults_table("| Option | A | B |\n|---|---|---|\n| `remove` | `False` | `True` |\n")
