"""The configuration reference, generated from a Configurable's own traits.

``.. gpuspawner-config:: gpuspawner.GPUSpawner`` renders the class docstring,
then every trait the class itself defines with ``config=True`` (not the
inherited ones: those belong to DockerSpawner's and JupyterHub's docs), in the
order of the source, with its type, default and ``help``. With
``:changed-defaults:`` it also renders a table of the inherited options whose
default the class overrides with ``@default``, as computed on bare instances
(an override whose value depends on other options is left out there).

A config trait without ``help`` is a warning, so under ``sphinx-build -W`` a
new option cannot ship undocumented. The directive emits reStructuredText, so
use it inside ``{eval-rst}`` in a MyST page (traitlets help is rST).
"""

from __future__ import annotations

import importlib
import inspect

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles
from traitlets import DefaultHandler

logger = logging.getLogger(__name__)


def _import(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _indent(text: str, prefix: str) -> list[str]:
    return [prefix + line if line.strip() else "" for line in text.splitlines()]


def _value(value) -> str:
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value)


def _own_config_traits(cls) -> list:
    """The class's own config traits, in the order they are written in the class body."""
    own = cls.class_own_traits(config=True)
    order = [name for name in vars(cls) if name in own]
    return [(name, own[name]) for name in order + sorted(set(own) - set(order))]


def _changed_defaults(cls) -> list[str]:
    """Names of inherited traits whose default this class overrides, in source order."""
    own = cls.class_own_traits()
    names = []
    for attr in vars(cls).values():
        if isinstance(attr, DefaultHandler) and attr.trait_name not in own:
            names.append(attr.trait_name)
    return names


class ConfigReferenceDirective(SphinxDirective):
    required_arguments = 1
    option_spec = {"changed-defaults": directives.flag}

    def run(self):
        dotted = self.arguments[0]
        cls = _import(dotted)
        module = cls.__module__.split(".")[0]  # documented where users import it from
        if getattr(importlib.import_module(module), cls.__name__, None) is not cls:
            module = cls.__module__
        name = cls.__name__

        lines = [f".. py:class:: {name}", f"   :module: {module}", ""]
        lines += _indent(inspect.cleandoc(cls.__doc__ or ""), "   ")
        lines.append("")

        for trait_name, trait in _own_config_traits(cls):
            help_text = inspect.cleandoc(trait.help or "")
            if not help_text:
                logger.warning(
                    "%s.%s is config=True but has no help: add help=... to document it",
                    dotted,
                    trait_name,
                    location=self.get_location(),
                )
            try:
                default = trait.default_value_repr()
            except Exception:
                default = ""
            lines += [f"   .. py:attribute:: {trait_name}"]
            if default:
                lines += [f"      :value: {default}"]
            lines += [
                "",
                f"      ``c.{name}.{trait_name}``, a ``{type(trait).__name__}``.",
                "",
            ]
            lines += _indent(help_text, "      ")
            lines.append("")

        if "changed-defaults" in self.options:
            lines += self._changed_defaults_table(cls)

        content = StringList(lines, source=f"<gpuspawner-config {dotted}>")
        node = nodes.container()
        nested_parse_with_titles(self.state, content, node)
        return node.children

    def _changed_defaults_table(self, cls) -> list[str]:
        names = _changed_defaults(cls)
        if not names:
            return []
        base = cls.__mro__[1]
        try:  # evaluate the defaults on bare instances (no hub, no config)
            ours, theirs = cls(), base()
            rows = [(n, _value(getattr(theirs, n)), _value(getattr(ours, n))) for n in names]
        except Exception:
            rows = [(n, "", "") for n in names]
        # A default that only differs under some configuration looks the same here: leave it out.
        rows = [row for row in rows if not row[1] or row[1] != row[2]]
        lines = [
            ".. list-table:: Inherited options whose default differs",
            "   :header-rows: 1",
            "",
            "   * - Option",
            f"     - {base.__name__} default",
            f"     - {cls.__name__} default",
        ]
        for n, before, after in rows:
            lines += [
                f"   * - ``{n}``",
                f"     - ``{before}``" if before else "     -",
                f"     - ``{after}``" if after else "     -",
            ]
        return lines + [""]


def setup(app):
    app.add_directive("gpuspawner-config", ConfigReferenceDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
