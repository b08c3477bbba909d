"""Live latency of the explore page's loop (the default model, or a GPT-2-small-shaped one): engine, server and browser.

    python bench/bench_live.py [--model default|gpt2-small] [--requests N] [--edits M] [--debounce 200,600]
                               [--typing 100,180] [--threads T] [--no-browser]

1. engine: ``patchstudio.run`` on N distinct IOI prompts (a head sweep over all positions, and a
   per-position head sweep), in process;
2. server: the app on 127.0.0.1 (uvicorn in a thread, a fresh SQLite store), N POSTs of the
   explore form per sweep, each a new prompt (so nothing comes from the store), timed from the
   request to the last byte of the htmx fragment (spec parsing, the engine, storing, rendering);
3. browser: headless Chromium (Debian's, through Playwright; never ``playwright install``) on the
   explore page. For each debounce value the form's ``hx-trigger`` delay is set in the page, then M
   times: the clean prompt is set to a new IOI sentence minus its last two words, which are typed
   key by key (100 ms apart, a fast typist; 180 ms, a slower one), and the time from the last
   keydown to the redrawn heatmap (plotly's data changed, read every animation frame) is taken in
   the page's own clock. Requests sent per edit are counted (flooding), and each edit waits for
   Figure 1 of the new run to load before the next one, as a user reading it would.

With ``--model gpt2-small`` the same three on the GPT-2-small-shaped random model of
bench_patching.py (12 layers x 12 heads, d_model 768, a 50,257-word word-level tokenizer; random
weights, no pretrained ones offline) and its 16-token IOI-shaped pairs (one word swapped at position
11; the corruption typed, the answers t777 and t888), where an edit is answered first by the
attribution estimate and then by the exact sweep (patchstudio/live.py): engine, both runs; server,
the edit's POST (the estimate) and then the follow-up POST its answer carries (the exact result);
browser, last keydown to the estimate's heatmap drawn (the first picture) and to the exact result's
heatmap drawn (the exact picture).

Prints p50 and p95 of each. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEATMAP_Z = "(() => { const gd = document.getElementById('heatmap'); return gd && gd.data ? gd.data[0].z : null; })()"


BENCH = Path(__file__).resolve().parent
EXACT_Z = ("(() => { const gd = document.querySelector('#results .result[data-run-id=\"%s\"] #heatmap'); "
           "return gd && gd.data ? gd.data[0].z : null; })()")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def summary(label: str, ms: list[float]) -> str:
    return f"{label:44} n={len(ms):3d}  p50 {pct(ms, 50):7.1f} ms  p95 {pct(ms, 95):7.1f} ms  min {min(ms):6.1f} ms"


def prompts(n: int, seed: int) -> list[str]:
    from patchstudio.models.prompts import ioi_pairs

    seen, out = set(), []
    for pair in ioi_pairs(4 * n, seed=seed):
        if pair.clean not in seen:
            seen.add(pair.clean)
            out.append(pair.clean)
    return out[:n]


@contextlib.contextmanager
def serve(model, directory: str, **overrides):
    import uvicorn

    from patchstudio.settings import Settings
    from patchstudio.web.app import create_app

    settings = Settings(models=["default"], database_url=f"sqlite:///{directory}/runs.sqlite3", **overrides)
    app = create_app(settings, model_loader=lambda name: model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def engine_times(model, texts: list[str], positions: str) -> list[float]:
    from patchstudio.engine.run import run
    from patchstudio.models.prompts import guess_answers, swap_names

    out = []
    for text in texts:
        answer, wrong = guess_answers(text)
        spec = {"prompts": [{"clean": text, "corrupted": swap_names(text), "answer": answer, "wrong": wrong}],
                "component": "head", "positions": positions}
        start = time.perf_counter()
        run(model, spec)
        out.append(1000 * (time.perf_counter() - start))
    return out


def server_times(url: str, texts: list[str], positions: str) -> list[float]:
    import httpx

    from patchstudio.web.forms import DEFAULT_FORM

    out = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.get("/")
        for text in texts:
            form = {**DEFAULT_FORM, "clean": text, "positions": positions}
            start = time.perf_counter()
            response = client.post("/explore", data=form, headers={"HX-Request": "true"})
            response.read()
            out.append(1000 * (time.perf_counter() - start))
            assert response.status_code == 200 and 'id="heatmap"' in response.text, response.text[:500]
    return out


def _wait_until(predicate: str, timeout_ms: int = 60_000) -> str:
    """A function for ``page.evaluate``: a promise of ``performance.now()`` at the first animation
    frame where ``predicate`` (JS source of a function) holds; rejected after ``timeout_ms``."""
    return f"""() => new Promise((resolve, reject) => {{
        const holds = {predicate};
        const t0 = performance.now();
        const tick = () => {{
            if (holds()) resolve(performance.now());
            else if (performance.now() - t0 > {timeout_ms}) reject(new Error("timed out"));
            else requestAnimationFrame(tick);
        }};
        tick();
    }})"""


@contextlib.contextmanager
def explore_page(url: str, debounce_ms: int, timeout_ms: int):
    """Headless Chromium on the explore page, its form's debounce set to ``debounce_ms``, the last
    keydown in the clean prompt kept (``window.__lastKey``) and the form's requests counted."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(timeout_ms)
        page.goto(url + "/")
        page.evaluate(
            """ms => {
                const form = document.getElementById('spec-form');
                form.setAttribute('hx-trigger', form.getAttribute('hx-trigger').replace(/input delay:\\d+ms/, `input delay:${ms}ms`));
                htmx.process(form);
                window.__requests = 0;
                document.body.addEventListener('htmx:beforeRequest', e => { if (e.detail.elt === form) window.__requests++; });
                document.getElementById('clean').addEventListener('keydown', () => { window.__lastKey = performance.now(); });
            }""",
            debounce_ms,
        )
        try:
            yield page
        finally:
            browser.close()


def type_end(page, typed: str, typing_ms: int) -> None:
    """Type ``typed`` at the end of the clean prompt, key by key."""
    page.locator("#clean").focus()
    page.keyboard.press("End")
    page.keyboard.type(typed, delay=typing_ms)


def wait_figure1(page) -> None:
    """The reader's Figure 1 (triangulation) loads before the next edit, as a user reading it would wait."""
    with contextlib.suppress(Exception):
        page.evaluate(_wait_until("() => { const f = document.getElementById('figure1'); "
                                  "return !f || !f.textContent.includes('loading'); }", timeout_ms=60_000))


def browser_times(url: str, texts: list[str], debounce_ms: int, typing_ms: int) -> tuple[list[float], list[int]]:
    latencies, requests = [], []
    with explore_page(url, debounce_ms, 60_000) as page:
        # (the page's CSP forbids eval, which wait_for_function's string predicates need: these
        # waits are promises run with evaluate, polling once per animation frame)
        page.locator("#spec-form button[type=submit]").click()  # a GET computes nothing: run the form once
        page.evaluate(_wait_until("() => " + HEATMAP_Z + " !== null"))
        for text in texts:
            head, typed = text.rsplit(" ", 2)[0], " " + " ".join(text.rsplit(" ", 2)[1:])
            old = page.evaluate(HEATMAP_Z)
            page.evaluate("([v]) => { const el = document.getElementById('clean'); el.value = v; window.__requests = 0; }", [head])
            type_end(page, typed, typing_ms)
            changed = f"() => {{ const z = {HEATMAP_Z}; return z !== null && JSON.stringify(z) !== JSON.stringify(window.__old); }}"
            page.evaluate("old => { window.__old = old; }", old)
            done = page.evaluate(_wait_until(changed))
            latencies.append(done - page.evaluate("window.__lastKey"))
            requests.append(page.evaluate("window.__requests"))
            wait_figure1(page)
    return latencies, requests


# --- the GPT-2-small-shaped model: the estimate first, then the exact sweep --------------------------


def gpt2_pairs(n: int, seed: int) -> list[dict]:
    from bench_patching import prompt_pair

    return [prompt_pair("ioi", seed=seed + i) for i in range(n)]


def gpt2_specs(pair: dict) -> tuple:
    """The exact spec the form makes of ``pair``, and its attribution estimate's (their ids are what the page shows)."""
    from patchstudio.engine.methods.activation_patching import ActivationPatchingSpec
    from patchstudio.engine.methods.attribution_patching import AttributionPatchingSpec

    common = {"prompts": [pair], "component": "head", "positions": "all", "metric": "logit_diff", "direction": "denoise"}
    return ActivationPatchingSpec(**common), AttributionPatchingSpec(**common)


def gpt2_form(pair: dict) -> dict[str, str]:
    from patchstudio.web.forms import DEFAULT_FORM

    form = {**DEFAULT_FORM, "clean": pair["clean"], "corruption": "custom", "corrupted": pair["corrupted"],
            "answer": pair["answer"], "wrong": pair["wrong"]}
    form.pop("auto_answers")  # unchecked
    return form


def gpt2_engine_times(model, pairs: list[dict]) -> tuple[list[float], list[float]]:
    from patchstudio.engine.run import run

    estimate, exact = [], []
    for pair in pairs:
        for spec, out in zip(reversed(gpt2_specs(pair)), (estimate, exact)):
            start = time.perf_counter()
            run(model, spec)
            out.append(1000 * (time.perf_counter() - start))
    return estimate, exact


def gpt2_server_times(url: str, pairs: list[dict]) -> tuple[list[float], list[float]]:
    """Each edit's POST (its answer: the estimate) and the follow-up POST it carries (the exact result)."""
    import html
    import json
    import re

    import httpx

    first, exact = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        client.get("/")
        for pair in pairs:
            want_exact, want_estimate = (s.id for s in gpt2_specs(pair))
            start = time.perf_counter()
            response = client.post("/explore", data=gpt2_form(pair), headers={"HX-Request": "true"})
            response.read()
            first.append(1000 * (time.perf_counter() - start))
            assert f'data-run-id="{want_estimate}" data-live="estimate"' in response.text, response.text[:500]
            values = json.loads(html.unescape(re.search(r"hx-vals='([^']*)'", response.text).group(1)))
            response = client.post("/explore", data=values, headers={"HX-Request": "true"})
            response.read()
            exact.append(1000 * (time.perf_counter() - start))
            assert f'data-run-id="{want_exact}" data-live="exact"' in response.text, response.text[:500]
    return first, exact


def gpt2_browser_times(url: str, pairs: list[dict], debounce_ms: int, typing_ms: int) -> tuple[list[float], list[float]]:
    first, exact = [], []
    with explore_page(url, debounce_ms, 120_000) as page:
        page.evaluate("""() => {
            const form = document.getElementById('spec-form');
            form.querySelector('[name=corruption]').value = 'custom';
            form.querySelector('[name=auto_answers]').checked = false;
            ['corrupted', 'answer', 'wrong'].forEach(n => { form.querySelector(`[name=${n}]`).readOnly = false; });
        }""")
        for pair in pairs:
            want_exact, want_estimate = (s.id for s in gpt2_specs(pair))
            words = pair["clean"].split(" ")
            head, typed = " ".join(words[:-2]), " " + " ".join(words[-2:])
            page.evaluate("""([clean, corrupted, answer, wrong]) => {
                const form = document.getElementById('spec-form');
                form.querySelector('[name=clean]').value = clean;
                form.querySelector('[name=corrupted]').value = corrupted;
                form.querySelector('[name=answer]').value = answer;
                form.querySelector('[name=wrong]').value = wrong;
            }""", [head, pair["corrupted"], pair["answer"], pair["wrong"]])
            type_end(page, typed, typing_ms)
            shown = page.evaluate(_wait_until("() => " + EXACT_Z % want_estimate + " !== null || "
                                              + EXACT_Z % want_exact + " !== null"))
            drawn = page.evaluate(_wait_until("() => " + EXACT_Z % want_exact + " !== null"))
            key = page.evaluate("window.__lastKey")
            first.append(shown - key)
            exact.append(drawn - key)
            wait_figure1(page)
    return first, exact


def gpt2_main(args) -> None:
    sys.path.insert(0, str(BENCH))
    from bench_patching import build_model

    from patchstudio.live import naive_gflop
    from patchstudio.engine.run import plan

    model = build_model()
    cfg = model.cfg
    pairs = gpt2_pairs(args.requests + 2, seed=1)
    work = naive_gflop(model, plan(model, gpt2_specs(pairs[0])[0]))
    print(f"GPT-2-small-shaped random model ({cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}); "
          f"head sweep of a 16-token pair: {work:.0f} GFLOP naive (threshold: live_estimate_gflop); torch {torch.__version__}, "
          f"{args.threads} threads, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    # in a worker thread, as the server runs a request's engine: on this machine, under load, the same
    # runs in the main thread took about 4x the CPU time (its 2 OpenMP threads spinning; bench/README.md)
    times: list = []
    worker = threading.Thread(target=lambda: times.extend([gpt2_engine_times(model, pairs[:2]),  # warm up
                                                           gpt2_engine_times(model, pairs[2:])]))
    worker.start()
    worker.join()
    estimate, exact = times[1]
    print(summary("engine, attribution estimate (head sweep)", estimate), flush=True)
    print(summary("engine, exact head sweep (144 heads)", exact), flush=True)
    with tempfile.TemporaryDirectory() as directory, serve(model, directory) as url:
        first, done = gpt2_server_times(url, gpt2_pairs(args.requests, seed=1000))
        print(summary("server, edit POST -> estimate", first), flush=True)
        print(summary("server, edit POST + follow-up POST -> exact", done), flush=True)
        if not args.no_browser and Path(CHROMIUM).exists():
            for i, debounce in enumerate(int(d) for d in args.debounce.split(",")):
                for j, typing in enumerate(int(t) for t in args.typing.split(",")):
                    first, done = gpt2_browser_times(url, gpt2_pairs(args.edits, seed=2000 + 100 * (2 * i + j)), debounce, typing)
                    label = f"browser, debounce {debounce} ms, keys {typing} ms apart"
                    print(summary(f"{label}: first picture", first), flush=True)
                    print(summary(f"{label}: exact picture", done), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="distinct prompts per engine/server measurement")
    parser.add_argument("--edits", type=int, default=12, help="typed edits per debounce value in the browser")
    parser.add_argument("--debounce", default="200,600", help="debounce values (ms) to measure in the browser")
    parser.add_argument("--typing", default="100,180", help="ms between keys: a fast typist, and a slower one (flooding)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--model", choices=("default", "gpt2-small"), default="default",
                        help="gpt2-small: the GPT-2-small-shaped random model, estimate first then exact")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "gpt2-small":
        return gpt2_main(args)

    import patchstudio

    model = patchstudio.load_model()
    texts = prompts(args.requests + 2, seed=1)
    cfg = model.cfg
    print(f"default model ({cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}); torch {torch.__version__}, "
          f"{args.threads} threads, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    engine_times(model, texts[:2], "all")  # warm up (one-time checks, allocator)
    for positions, label in (("all", "head sweep"), ("each", "head sweep per position")):
        print(summary(f"engine, {label}", engine_times(model, texts[2:], positions)), flush=True)
    with tempfile.TemporaryDirectory() as directory, serve(model, directory) as url:
        for positions, label in (("all", "head sweep"), ("each", "head sweep per position")):
            batch = prompts(args.requests, seed=100 + len(positions))
            print(summary(f"server, {label}", server_times(url, batch, positions)), flush=True)
        if not args.no_browser and Path(CHROMIUM).exists():
            for i, debounce in enumerate(int(d) for d in args.debounce.split(",")):
                for j, typing in enumerate(int(t) for t in args.typing.split(",")):
                    lat, req = browser_times(url, prompts(args.edits, seed=200 + 10 * i + j), debounce, typing)
                    print(summary(f"browser, debounce {debounce} ms, keys {typing} ms apart", lat)
                          + f"  requests/edit {statistics.mean(req):.2f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
