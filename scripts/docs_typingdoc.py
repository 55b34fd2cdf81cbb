"""A griffe extension for the API reference: parameter docs from `Doc()`.

grelmicro documents parameters in their annotations,
`name: Annotated[str, Doc("The lock name.")]`. This extension, loaded by
mkdocstrings (see mkdocs.yml), turns each such annotation back into its type
for the signature and adds the `Doc()` text to the function's docstring as a
Google-style `Args:` section, so the reference shows a parameter table
instead of raw `Annotated[...]` signatures.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


def _doc_of(annotation: Any) -> tuple[Any, str] | None:
    """(type, text) when `annotation` is `Annotated[type, ..., Doc("text")]`."""
    if not isinstance(annotation, griffe.ExprSubscript):
        return None
    if str(annotation.left).split(".")[-1] != "Annotated":
        return None
    elements = annotation.slice
    if not isinstance(elements, griffe.ExprTuple) or not elements.elements:
        return None
    base, *extras = elements.elements
    for extra in extras:
        if (
            isinstance(extra, griffe.ExprCall)
            and str(extra.function).split(".")[-1] == "Doc"
            and extra.arguments
        ):
            try:
                text = ast.literal_eval(str(extra.arguments[0]))
            except (ValueError, SyntaxError):
                return None
            if isinstance(text, str):
                return base, " ".join(text.split())
    return None


def _rewrite(func: griffe.Function) -> None:
    lines: list[str] = []
    for parameter in func.parameters:
        found = _doc_of(parameter.annotation)
        if found is None:
            continue
        parameter.annotation, text = found
        lines.append(f"    {parameter.name}: {text}")
    if not lines:
        return
    section = "Args:\n" + "\n".join(lines)
    old = func.docstring
    if old is not None and "Args:" in old.value:
        return
    # A leading newline keeps the items indented: the docstring is cleaned
    # with inspect.cleandoc, which dedents every line after the first.
    func.docstring = griffe.Docstring(
        "\n" + section if old is None else old.value.rstrip() + "\n\n" + section,
        lineno=None if old is None else old.lineno,
        endlineno=None if old is None else old.endlineno,
        parent=func,
        parser=(old.parser if old is not None else None) or griffe.Parser.google,
        parser_options=None if old is None else old.parser_options,
    )


def _walk(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    for member in obj.members.values():
        if member.is_alias:
            continue
        if isinstance(member, griffe.Function):
            _rewrite(member)
        elif isinstance(member, griffe.Attribute):
            found = _doc_of(member.annotation)
            if found is not None:
                member.annotation = found[0]
        elif isinstance(member, griffe.Module | griffe.Class):
            _walk(member, seen)


class TypingDoc(griffe.Extension):
    """Move `Annotated[..., Doc("...")]` parameter docs into the docstrings."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())
