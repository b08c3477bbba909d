"""The shared server's guard rails: cross-site POSTs refused, trusted hosts, security headers, API
docs with no external URL, errors that never show internals (only a request id), bad input as 4xx."""

from __future__ import annotations

import logging
import re

import pytest

from web_helpers import HTMX, IOI, IOI_CORRUPTED, form, make_client

SPEC = {"prompts": [{"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}], "component": "head"}


@pytest.fixture
def run_id(client):
    return client.post("/api/runs", json=SPEC).json()["id"]


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://testserver.evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
], ids=["other-origin", "null-origin", "lookalike-origin", "sec-fetch-cross-site"])
def test_cross_site_posts_are_refused(client, run_id, headers):
    posts = [("/api/runs", {"json": SPEC}), ("/api/jobs", {"json": SPEC}), ("/explore", {"data": form()}),
             (f"/runs/{run_id}/figure1?layer=0&head=0", {}), (f"/jobs/{run_id}/cancel", {}), (f"/api/jobs/{run_id}/cancel", {})]
    before = client.get("/api/runs").json()
    for path, body in posts:
        response = client.post(path, headers=headers, **body)
        assert response.status_code == 403, path
        assert "cross-site request refused" in response.text
    assert client.get("/api/runs").json() == before


@pytest.mark.parametrize("headers", [{}, {"Origin": "http://testserver"}, {"Origin": "https://testserver"},
                                     {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}],
                         ids=["api-client", "same-origin", "same-host-behind-tls", "browser-same-origin"])
def test_same_site_and_api_clients_may_post(client, headers):
    assert client.post("/api/runs", json=SPEC, headers=headers).status_code == 200


def test_configured_origins_and_public_url(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, public_url="https://patch.lab.example", allowed_origins=["https://notebooks.lab.example"]) as c:
        for origin in ("https://patch.lab.example", "https://notebooks.lab.example"):
            assert c.post("/api/runs", json=SPEC, headers={"Origin": origin}).status_code == 200
        assert c.post("/api/runs", json=SPEC, headers={"Origin": "https://evil.example"}).status_code == 403
        run_id = c.post("/api/runs", json=SPEC).json()["id"]
        page = c.get(f"/runs/{run_id}").text
        # share links from the public URL (with the view they show: issue 20)
        assert re.search(rf'value="https://patch\.lab\.example/runs/{run_id}\?_view=share&amp;_scale=gap&amp;_layer=\d', page)


def test_untrusted_host_is_refused(client):
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding, a wrong name
    assert client.get("/").status_code == 200


def test_security_headers_on_pages_api_and_static_files(client, run_id):
    for path in ("/", f"/runs/{run_id}", f"/runs/{run_id}.json", "/static/app.js", "/docs", "/healthz", "/nope"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-eval" not in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin" and headers["x-frame-options"] == "DENY"
        assert re.fullmatch(r"[0-9a-f]{12}", headers["x-request-id"])


def test_pages_have_no_inline_script_or_handlers(client, run_id):
    """The CSP allows only script files: every <script> on a page is a file or a JSON data block."""
    client.post(f"/runs/{run_id}/figure1?layer=0&head=0")
    for path in ("/", f"/runs/{run_id}", f"/runs/{run_id}/figure1?layer=0&head=0", "/docs"):
        text = client.get(path).text
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, (path, tag)
        assert not re.search(r"\son[a-z]+\s*=", text), path  # no onclick= and the like
        assert "hx-on" not in text and "javascript:" not in text


def test_api_docs_are_served_from_vendored_files(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no external URL
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404


def test_server_errors_show_a_request_id_and_hide_the_details(tmp_path, tiny_model, caplog):
    with make_client(tmp_path, tiny_model, raise_server_exceptions=False) as c:
        run_id = c.post("/api/runs", json=SPEC).json()["id"]

        def broken(*args, **kwargs):
            raise RuntimeError("SELECT secret FROM /var/lib/patchstudio/data.sqlite3")

        c.app.state.service.store.get = broken
        with caplog.at_level(logging.ERROR, logger="patchstudio.web"):
            api = c.get(f"/runs/{run_id}.json")
            page = c.get(f"/runs/{run_id}", headers=HTMX)
    for response in (api, page):
        assert response.status_code == 500
        for secret in ("RuntimeError", "SELECT", "/var/lib", "sqlite3", "Traceback"):
            assert secret not in response.text
        assert response.headers["x-request-id"] in response.text
    assert api.json()["request_id"] == api.headers["x-request-id"]
    logged = caplog.text
    assert "RuntimeError: SELECT secret" in logged and api.headers["x-request-id"] in logged


@pytest.mark.parametrize("path, field", [
    ("/runs/{id}?_pos=-1", "_pos"),
    ("/runs/{id}?_view=bogus", "_view"),
    ("/runs/{id}/figure1?layer=-4&head=0", "layer"),
    ("/runs/{id}/figure1?layer=0&head=-1", "head"),
    ("/runs/{id}/figure1?layer=0&head=0&pos=2", "pos"),
    ("/runs/{id}/figure1?layer=x&head=0", "layer"),
    ("/runs/{id}/agreement", "method"),
    ("/api/runs?limit=-5", "limit"),
])
def test_bad_view_parameters_are_4xx_naming_the_field(client, run_id, path, field):
    response = client.get(path.format(id=run_id))
    assert 400 <= response.status_code < 500 and field in response.text, response.text


def test_lone_surrogates_and_nul_are_422_naming_the_field(client):
    body = '{"prompts": [{"clean": "When Mary \\ud800 and", "corrupted": "x", "answer": "Mary", "wrong": "John"}]}'
    response = client.post("/api/runs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == "prompts.0.clean"
    assert "lone surrogate" in response.json()["detail"]
    response = client.post("/api/runs", json={**SPEC, "metric": "kl\u0000"})
    assert response.status_code == 422 and response.json()["field"] == "metric"
    form_response = client.post("/explore", content="clean=When%ED%A0%80Mary&method=activation_patching",
                                headers={**HTMX, "content-type": "application/x-www-form-urlencoded"})
    assert form_response.status_code < 500


def test_unknown_ids_are_404_without_a_lookup(client):
    for path in ("/runs/%ED%A0%80.json", "/runs/' OR 1=1 --.json", "/jobs/../../etc/passwd.json", "/runs/" + "a" * 70):
        response = client.get(path)
        assert response.status_code in (404, 422), path


def test_job_cap_per_client_is_429(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, max_jobs_per_client=2, local_workers=0) as c:
        c.get("/")  # a browser's first page sets its session cookie
        for component in ("head", "mlp_out"):
            assert c.post("/api/jobs", json={**SPEC, "component": component}).status_code == 202
        refused = c.post("/api/jobs", json={**SPEC, "component": "attn_out"})
        assert refused.status_code == 429 and refused.json()["field"] == "jobs" and "limit is 2" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        assert c.post("/api/jobs", json={**SPEC, "component": "head"}).status_code == 202  # the same job again is no new one
        # another browser (another session cookie) has its own cap
        c.cookies.clear()
        assert c.post("/api/jobs", json={**SPEC, "component": "attn_out"}).status_code == 202


def test_synchronous_runs_are_capped_then_202_with_a_job(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, background_patched_runs=10, local_workers=0) as c:
        small = c.post("/api/runs", json=SPEC)  # 8 patched runs: computed in the request
        assert small.status_code == 200
        large = c.post("/api/runs", json={**SPEC, "positions": "each"})
        assert large.status_code == 202 and large.json()["status"] == "queued"
        assert large.headers["location"] == f"/jobs/{large.json()['id']}.json"
        assert c.get(large.headers["location"]).json()["status"] == "queued"
