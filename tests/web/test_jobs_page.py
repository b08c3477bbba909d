"""The jobs list (/jobs and its .json twin), the cancel of a job an edit replaced when nobody else
watches it, and recent runs that say what was asked with companion runs under their parent."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from patchstudio.web.watchers import Watchers
from web_helpers import HTMX, form, make_client

PAGE_A = {**HTMX, "X-Patchstudio-Page": "page-aaaa1"}
PAGE_B = {**HTMX, "X-Patchstudio-Page": "page-bbbb2"}


@pytest.fixture
def queued(tmp_path, tiny_model):
    """Every experiment is a job, and no worker takes it: jobs stay queued until cancelled."""
    with make_client(tmp_path, tiny_model, background_patched_runs=0, local_workers=0) as c:
        c.get("/")  # the session cookie: this client's key
        yield c


def submit(client, headers=PAGE_A, **overrides) -> str:
    response = client.post("/explore", data=form(**overrides), headers=headers)
    assert response.status_code == 200
    return re.search(r'id="job" data-job-id="([0-9a-f]{16})"', response.text).group(1)


def test_jobs_page_and_its_twin_list_what_each_job_computes(queued):
    job_id = submit(queued, metric="prob")
    page = queued.get("/jobs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<link rel="alternate" type="application/json" href="/jobs.json">' in page.text
    data = queued.get("/jobs.json").json()
    assert [j["id"] for j in data["queued"]] == [job_id] and data["running"] == [] and data["recent"] == []
    job = data["queued"][0]
    assert job["summary"] == {"method": "activation patching", "component": "head", "direction": "denoise", "metric": "prob"}
    assert job["total"] == 8 and job["done"] == 0  # its size, priced when it was submitted
    assert job["estimate"] == {"rate": None, "basis": None, "seconds_left": None, "words": ""}  # nothing measured yet
    row = re.search(rf'<tr class="job-row status-queued" data-job-id="{job_id}">.*?</tr>', page.text, re.S).group(0)
    text = re.sub(r"<[^>]+>", "", row)
    assert "activation patching · head · denoise · prob" in " ".join(text.split())
    assert "not measured yet" in text and "waiting for a worker" in text and "0 / 8" in text
    assert 'hx-get="/jobs"' in page.text  # it refreshes itself while jobs are active
    assert '<a href="/jobs">Jobs</a>' in queued.get("/").text  # in the nav


def test_time_left_from_the_models_measured_rate_and_the_result_linked_when_done(queued):
    store = queued.app.state.service.jobs.store
    done_id = submit(queued)
    attempt = store.claim(done_id, "w")
    store.progress(done_id, attempt, 8, 8)
    store.finish(done_id, attempt, "done")
    with store.engine.begin() as conn:  # it took 4 s: the model runs 2 patched runs a second
        from patchstudio.jobs.store import jobs

        conn.execute(jobs.update().where(jobs.c.id == done_id).values(
            started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), finished_at=dt.datetime(2026, 1, 1, 0, 0, 4, tzinfo=dt.timezone.utc)))
    waiting = submit(queued, metric="prob")
    data = queued.get("/jobs.json").json()
    estimate = data["queued"][0]["estimate"]
    assert (estimate["rate"], estimate["basis"], estimate["seconds_left"], estimate["words"]) == (2.0, "model", 4.0, "about 4 s")
    assert data["queued"][0]["id"] == waiting
    assert data["recent"][0]["id"] == done_id and data["recent"][0]["links"]["result"] == f"/runs/{done_id}"
    page = queued.get("/jobs").text
    assert f'<a class="result-link" href="/runs/{done_id}">done: see the result</a>' in page
    assert "about 4 s" in page and "2.0 patched runs/s (model&#39;s recent jobs)" in page


def test_an_edit_cancels_the_job_it_replaces_when_nobody_else_watches_it(queued):
    first = submit(queued)
    queued.get(f"/jobs/{first}", headers=PAGE_A)  # this page's own poll is not someone else watching
    response = queued.post("/explore", data={**form(metric="prob"), "replaces": first}, headers=PAGE_A)
    assert "was cancelled: nobody else was watching it" in response.text
    assert queued.get(f"/jobs/{first}.json").json()["status"] == "cancelled"


@pytest.mark.parametrize("watcher", ["another page", "an API client"])
def test_an_edit_keeps_a_job_another_page_or_client_is_watching(queued, watcher):
    first = submit(queued)
    if watcher == "another page":
        queued.get(f"/jobs/{first}", headers=PAGE_B)  # a second tab polling the job's link
    else:
        queued.get(f"/jobs/{first}.json")
    response = queued.post("/explore", data={**form(metric="prob"), "replaces": first}, headers=PAGE_A)
    assert re.search(r"goes on: (another page is watching it)", response.text)
    assert queued.get(f"/jobs/{first}.json").json()["status"] == "queued"


def test_an_edit_never_cancels_another_clients_job_or_the_job_it_submits_again(queued, tmp_path):
    first = submit(queued)
    same = queued.post("/explore", data={**form(), "replaces": first}, headers=PAGE_A)  # the same experiment: joined
    assert "replaced-note" not in same.text
    assert queued.get(f"/jobs/{first}.json").json()["status"] == "queued"
    queued.cookies.clear()  # someone else (another session) edits from a page that showed this job
    queued.get("/")
    other = queued.post("/explore", data={**form(metric="prob"), "replaces": first}, headers=PAGE_B)
    assert "goes on: someone else asked for it too" in other.text
    assert queued.get(f"/jobs/{first}.json").json()["status"] == "queued"


def test_watchers_count_other_pages_within_the_window():
    now = [100.0]
    watchers = Watchers(window=10, clock=lambda: now[0], max_jobs=2)
    watchers.seen("j", "a")
    watchers.seen("j", "b")
    assert watchers.others("j", "a") == 1 and watchers.others("j", None) == 2 and watchers.others("k", "a") == 0
    now[0] = 111.0
    assert watchers.others("j", "a") == 0  # b stopped polling 11 s ago
    watchers.seen("k", "a")
    watchers.seen("m", "a")  # full: stale entries go first
    assert watchers.others("k", None) == 1 and watchers.others("m", None) == 1


def test_recent_runs_say_what_was_asked_with_companions_under_their_parent(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model) as client:
        parent = client.post("/explore", data=form(), headers=HTMX).headers["HX-Push-Url"].rsplit("/", 1)[1]
        client.post(f"/runs/{parent}/figure1?layer=0&head=1")  # its companion runs, computed on request
        store = client.app.state.service.store
        companions = [r.id for r in store.recent(50) if r.id != parent]
        assert len(companions) >= 3
        page = client.get("/").text
        top = re.findall(r'<li class="recent-run" data-run-id="([0-9a-f]{16})"', page)
        assert top == [parent]  # the companions do not fill the list
        listed = re.findall(r'<li class="companion-run" data-run-id="([0-9a-f]{16})"', page)
        assert sorted(listed) == sorted(companions)
        item = re.search(r'<li class="recent-run".*?</details>', page, re.S).group(0)
        text = " ".join(re.sub(r"<[^>]+>", "", item).split())
        assert "activation patching · head · denoise · logit_diff" in text
        assert f"{len(companions)} companion runs (Figure 1, triangulation)" in text
        assert "mean ablation: " in text and "ablation · head · mean ablation · logit_diff" in text
        api = {r["id"]: r for r in client.get("/api/runs?limit=50").json()}  # the twin: flat, with companion_of
        assert api[parent]["companion_of"] is None and api[parent]["direction"] == "denoise"
        assert all(api[c]["companion_of"]["id"] == parent for c in companions)
        # asking for a companion from the form makes it a run of its own
        asked = client.post("/explore", data=form(method="ablation", ablation="mean"), headers=HTMX).headers["HX-Push-Url"]
        asked = asked.rsplit("/", 1)[1]
        assert asked in companions
        top = re.findall(r'<li class="recent-run" data-run-id="([0-9a-f]{16})"', client.get("/").text)
        assert sorted(top) == sorted([parent, asked])
