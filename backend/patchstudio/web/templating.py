"""The frontend's templates with their globals and filters, and whether a request is htmx's.

One template per page; an htmx request gets blocks of it (jinja2-fragments), a full request the page.
"""

from __future__ import annotations

from fastapi import Request
from jinja2_fragments.fastapi import Jinja2Blocks

from patchstudio.analysis import percent
from patchstudio.web import url_builder as urls
from patchstudio.web.url_builder import FRONTEND

templates = Jinja2Blocks(directory=str(FRONTEND / "templates"))
templates.env.globals["urls"] = urls
templates.env.filters["pct"] = percent


def is_htmx(request: Request) -> bool:
    """An htmx request for a fragment (a history restore wants the whole page)."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


__all__ = ["FRONTEND", "is_htmx", "templates"]
