"""Bad input, and the one place that turns it into ``{field, message}`` for every caller.

The CLI, the JSON API and the explore form all report a problem the same way: which field of the
spec is wrong, and in plain words why. A pydantic ``ValidationError`` of a spec names its field by
a path that starts with the method's discriminator tag (``path_patching.receivers.0.layer``); the
tag is dropped here, for every method, so the path is the spec's own (``receivers.0.layer``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class InputError(ValueError):
    """Bad input: the message says what is wrong; ``field`` names the spec (or form) field;
    ``detail`` carries data a UI can show (e.g. both tokenizations with the differing position)."""

    def __init__(self, message: str, *, field: str | None = None, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.field = field
        self.detail = detail or {}


def field_errors(exc: ValidationError | InputError, method_tags: frozenset[str] | None = None) -> list[dict[str, str]]:
    """One ``{"field": "receivers.0.layer", "message": "..."}`` per problem.

    ``method_tags``: the discriminator values to strip from the front of a path (default: every
    registered method)."""
    if isinstance(exc, InputError):
        return [{"field": exc.field or "", "message": str(exc)}]
    if method_tags is None:
        from patchstudio.specs import method_names

        method_tags = frozenset(method_names())
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in method_tags:
            loc = loc[1:]
        message = err["msg"]
        if message.startswith("Value error, "):  # pydantic's prefix for our validators' messages
            message = message[len("Value error, "):]
        out.append({"field": ".".join(loc), "message": message})
    return out


def describe(errors: list[dict[str, str]]) -> str:
    """The errors on one line: 'receivers.0.layer: Input should be ...; metric: ...'."""
    return "; ".join(f"{e['field'] or 'spec'}: {e['message']}" for e in errors)


def check_text(value: str, field_name: str, max_chars: int | None = None) -> None:
    """Refuse text a tokenizer or a database cannot take: lone surrogates, NUL, or too long."""
    if max_chars is not None and len(value) > max_chars:
        raise InputError(f"{field_name} is {len(value):,} characters long; the limit is {max_chars:,}", field=field_name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{field_name} is not valid Unicode text (it holds a lone surrogate)", field=field_name) from None
    if "\x00" in value:
        raise InputError(f"{field_name} holds a NUL character", field=field_name)
