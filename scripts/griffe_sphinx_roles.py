"""Griffe extension for the API reference: Sphinx roles become mkdocs-autorefs links.

A docstring that still says ``:class:`AsyncSemaphore``` (reStructuredText) would otherwise be
rendered literally by mkdocstrings. Each role becomes a Markdown cross-reference,
``[`AsyncSemaphore`][procthrottle.AsyncSemaphore]``, which mkdocs-autorefs turns into a link.
tests/test_docs.py still fails on roles in the sources: write backticks (or autorefs links)
in new docstrings; this extension only keeps the rendered pages right meanwhile.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|exc|mod|data|obj|const):`~?([\w.]+)`")
#: Where a bare name in a role is looked for: the public modules, in order.
PUBLIC_MODULES = ("procthrottle", "procthrottle.redis")


def _public_path(name: str) -> str:
    for module in PUBLIC_MODULES:
        try:
            if hasattr(importlib.import_module(module), name):
                return f"{module}.{name}"
        except ImportError:  # the redis extra is missing
            continue
    return f"{PUBLIC_MODULES[0]}.{name}"


def convert(text: str) -> str:
    """Replace every Sphinx role in ``text`` by an autorefs link to the named object."""

    def link(match: re.Match[str]) -> str:
        target = match.group(1)
        shown = target.rsplit(".", 1)[-1] if match.group(0).count("~") else target
        if "." not in target:
            target = _public_path(target)
        return f"[`{shown}`][{target}]"

    return ROLE.sub(link, text)


class SphinxRolesToAutorefs(griffe.Extension):
    """Rewrite every loaded object's docstring once, before it is rendered."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
