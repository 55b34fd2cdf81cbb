"""Errors shared by every grelmicro module.

Every exception raised by grelmicro derives from `GrelmicroError`. Most also
derive from the builtin that describes them best (`ValueError`, `RuntimeError`,
`ImportError`), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class GrelmicroError(Exception):
    """Root of every grelmicro error."""


class OutOfContextError(GrelmicroError, RuntimeError):
    """A method that needs an entered async context manager was called outside it."""

    def __init__(
        self, cls: object, method_name: str, *, message: str | None = None
    ) -> None:
        name = cls if isinstance(cls, str) else type(cls).__name__
        super().__init__(
            message
            or (
                f"Could not call {name}.{method_name} outside of the context "
                f"manager: use 'async with' on the {name} first"
            )
        )


class SettingsValidationError(GrelmicroError, ValueError):
    """An argument given to a grelmicro object is invalid; the message names it."""


class DependencyNotFoundError(GrelmicroError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, *, module: str, extra: str) -> None:
        super().__init__(
            f"The '{module}' package is required here but is not installed. "
            f"Install it with: pip install 'grelmicro[{extra}]'"
        )
