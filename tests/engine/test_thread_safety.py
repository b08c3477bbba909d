"""Every call into the model holds its lock: readouts in other threads cannot see (or feed) the
hooks of a self-repair run, which caches ln_final.hook_scale while it runs."""

from __future__ import annotations

import threading

import torch

from helpers import TINY_PAIRS
from patchstudio.engine.metrics import Readout
from patchstudio.engine.run import run

REPAIR = {"method": "self_repair", "prompts": TINY_PAIRS, "targets": [{"layer": 0, "head": 1}], "ablation": "zero"}


def test_readouts_in_threads_during_self_repair_equal_serial(tiny_model):
    torch.manual_seed(0)
    resid = torch.randn(64, tiny_model.cfg.d_model)
    answer, wrong = (int(t) for t in tiny_model.to_tokens(" Mary John", prepend_bos=False)[0])
    readout = Readout(tiny_model, "logit_diff", answer, wrong)
    full = Readout(tiny_model, "loss", answer, wrong)  # normalises over the vocabulary: the full unembedding
    with torch.no_grad():
        serial_readouts = (readout(resid), full(resid))
    serial_repair = run(tiny_model, REPAIR)

    stop = threading.Event()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    errors: list[BaseException] = []

    def read_many() -> None:
        try:
            with torch.no_grad():
                while not stop.is_set():
                    seen.append((readout(resid), full(resid)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read_many) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        repairs = [run(tiny_model, REPAIR) for _ in range(6)]
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert not errors, errors
    assert len(seen) > 10  # the readouts really ran alongside
    for a, b in seen:
        assert torch.equal(a, serial_readouts[0]) and torch.equal(b, serial_readouts[1])
    for r in repairs:
        assert r.values == serial_repair.values
        assert r.extras == serial_repair.extras
