"""The time-left estimate of background jobs against their real durations, on the default model.

Runs jobs through a real queue (SQLite, one worker thread) and samples each job's estimate every
0.1 s as a page polling /jobs would (with the web layer's ProgressLog where the code has one), then
prints "elapsed: estimate / true seconds left" every 0.5 s. Scenario a: IOI per-position head sweeps
(3,840, then 30,720, then 19,200 patched runs); b: a path-patching job first, then a head sweep,
then two sweeps submitted at once (the second waits).

    PYTHONPATH=backend python bench/eta_measure.py a
    PYTHONPATH=backend python bench/eta_measure.py b
"""
import sys
import tempfile
import time
from pathlib import Path
from patchstudio.settings import Settings
from patchstudio.store import Store
from patchstudio.service import ExperimentService
from patchstudio.jobs import open_queue
from patchstudio.jobs import eta
from patchstudio.jobs.store import utcnow
from patchstudio.web.forms import DEFAULT_FORM, spec_from_form

def spec(**form):
    st = spec_from_form({**DEFAULT_FORM, **{k: str(v) for k, v in form.items()}})
    assert st.error is None, st.error
    return st.spec

d = Path(tempfile.mkdtemp())
settings = Settings(models=["default"], database_url=f"sqlite:///{d}/runs.sqlite3")
store = Store(settings.resolved_database_url())
service = ExperimentService(settings, store)
service.load_models()
queue = open_queue(settings, store, lambda s, progress: service.get_or_run(s, progress), ["default"])
service.jobs = queue
queue.start()

try:
    from patchstudio.web.progress import ProgressLog
    LOG = ProgressLog()
except ImportError:  # before: no log
    LOG = None

def estimate_now(job_id):
    js = queue.store
    running = js.by_status(["running"], 50)
    active = running + js.by_status(["queued"], 50)
    now = utcnow()
    if LOG is None:
        est = eta.estimates(active, js.finished(["default"]), now)
    else:
        est = eta.estimates(active, js.finished(["default"]), now, since=LOG.observe(running, now))
    return est.get(job_id)

def follow(specs, label):
    """Submit the specs at once; sample each job's estimate every 0.1 s until all are done."""
    t0 = time.monotonic()
    jobs = [service.enqueue(s, "measure") for s in specs]
    samples = {j.id: [] for j in jobs}
    while True:
        rows = {j.id: queue.store.get(j.id) for j in jobs}
        now = time.monotonic() - t0
        for jid, row in rows.items():
            if row.status in ("queued", "running"):
                e = estimate_now(jid)
                samples[jid].append((now, row.status, row.done, row.total, e.seconds_left if e else None, e.basis if e else None))
        if all(r.status not in ("queued", "running") for r in rows.values()):
            break
        time.sleep(0.1)
    for j in jobs:
        row = rows[j.id]
        end = (row.finished_at - row.created_at).total_seconds()
        ran = (row.finished_at - row.started_at).total_seconds()
        s = samples[j.id]
        def at(t):  # the first sample at or after t seconds
            for x in s:
                if x[0] >= t:
                    return x
            return None
        def fmt(x):
            if x is None: return "-"
            true_left = end - x[0]
            return f"t={x[0]:.1f}s {x[1]} {x[2]}/{x[3]} est={'none' if x[4] is None else f'{x[4]:.1f}s'} ({x[5]}) true={true_left:.1f}s"
        print(f"[{label}] job {j.method} total={row.total} ran {ran:.2f}s, finished {end:.2f}s after submit")
        traj = []
        t = 0.0
        while t < end:
            x = at(t)
            if x is None: break
            traj.append(f"{x[0]:.1f}s:{'-' if x[4] is None else f'{x[4]:.1f}'}/{end - x[0]:.1f}")
            t += 0.5
        print("     est/true:", " ".join(traj))
    return rows

# the examples: IOI per-position head sweeps (4 layers x 8 heads x 15 positions x pairs)
small = spec(source="family", n_pairs=8, positions="each")                  # 3,840 runs
big = spec(source="family", n_pairs=64, positions="each")                   # 30,720 runs
mid = spec(source="family", n_pairs=40, positions="each")                   # 19,200 runs
path = spec(source="family", n_pairs=64, method="path_patching", receivers="L3H0.q L3H5.k")
res = spec(source="family", n_pairs=64, positions="each", component="resid_pre", family_seed=1)
scenario = sys.argv[1] if len(sys.argv) > 1 else "a"
if scenario == "a":
    follow([small], "first job, nothing measured")
    follow([big], "after one small job")
    follow([mid], "after small+big")
elif scenario == "b":
    follow([path], "path patching first")
    follow([big], "after a path patching job")
    follow([mid, spec(source="family", n_pairs=40, positions="each", family_seed=3)], "two at once")
queue.shutdown()
