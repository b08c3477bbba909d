"""A study's notes, Markdown rendered safely (markdown-it-py, CommonMark plus tables and strikethrough).

Raw HTML is off, so ``<script>`` or ``<a onclick>`` in the notes shows as text; links are kept only
with an http(s) or mailto scheme, or none (a relative link), so ``javascript:``, ``data:`` and the
like stay plain text; images are off (notes are words: the figures are the runs', and the CSP
would block another site's image anyway). Links leave with ``rel="nofollow noopener noreferrer"``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markupsafe import Markup

SAFE_SCHEMES = ("http", "https", "mailto")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


def _safe_link(url: str) -> bool:
    # markdown-it hands over the link percent-encoded; browsers ignore control characters and
    # whitespace inside a scheme ("java\tscript:"): decode, and drop them, before reading the scheme
    compact = re.sub(r"[\x00-\x20\x7f]", "", unquote(url))
    scheme = _SCHEME.match(compact)
    return scheme is None or scheme.group(1).lower() in SAFE_SCHEMES


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"]).disable("image")
    md.validateLink = _safe_link  # type: ignore[method-assign]

    def link_open(renderer, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MD = _markdown()


def render_notes(text: str) -> Markup:
    """The notes as HTML that is safe to put in a page as it is."""
    return Markup(_MD.render(text))
