"""Reads never compute: viewing pages and following every link on them leaves the database exactly
as it was (every table's rows), whatever is or is not stored yet. Only POSTs compute."""

from __future__ import annotations

import html
import re

from web_helpers import HTMX, form

LINK = re.compile(r'(?:href|src|hx-get|data-figure1)="([^"]+)"')


def crawl(client, start: list[str], limit: int = 300) -> list[str]:
    """GET every same-site link reachable from ``start`` (pages, fragments, twins, static files)."""
    seen: list[str] = []
    todo = list(start)
    while todo and len(seen) < limit:
        url = todo.pop(0)
        if url in seen:
            continue
        seen.append(url)
        for headers in ({}, HTMX):  # full pages and the htmx fragments behind the same links
            response = client.get(url, headers=headers, follow_redirects=False)
            assert response.status_code < 500, url
            if url.startswith("/static/") or "html" not in response.headers.get("content-type", ""):
                break
            for link in LINK.findall(response.text):
                link = html.unescape(link)
                if link.startswith("/") and not link.startswith("//") and link not in seen:
                    todo.append(link)
    return seen


def test_home_on_an_empty_database_stores_nothing(client):
    store = client.app.state.service.store
    before = store.table_snapshot()
    assert sum(len(rows) for rows in before.values()) == 0
    visited = crawl(client, ["/"])
    assert "/docs" in visited and any(v.startswith("/static/app.js") for v in visited)
    assert store.table_snapshot() == before


def test_following_every_link_on_run_pages_changes_nothing(client):
    ids = []
    for overrides in ({}, {"method": "attribution_patching"}, {"method": "ablation", "component": "resid_pre", "positions": "each"},
                      {"method": "self_repair", "targets": "L0H1"}, {"method": "input_influence"}):
        ids.append(client.post("/explore", data=form(**overrides), headers=HTMX).headers["HX-Push-Url"])
    client.post(f"{ids[0]}/figure1?layer=0&head=1")  # some companions stored, others not
    store = client.app.state.service.store
    before = store.table_snapshot()
    cells = [f"{ids[0]}/figure1?layer={layer}&head={head}" for layer in range(2) for head in range(4)]
    visited = crawl(client, [*ids, *cells, f"{ids[1]}/agreement", f"{ids[2]}/figure1?layer=1&pos=3"])
    assert any(v.endswith(".csv") for v in visited) and any("_view=" in v for v in visited)
    assert any("/figure1?" in v for v in visited) and len(visited) > 40
    assert store.table_snapshot() == before
