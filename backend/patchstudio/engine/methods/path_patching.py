"""Path patching: the effect of one head through a chosen route, not through everything.

Path patching (Wang et al. 2022, "Interpretability in the wild", IOI; Goldowsky-Dill et al. 2023)
restricts a patch to a connection. The sender head's output takes its value on the
counterfactual run; every other attention head is frozen at its value on the base run (MLPs are
recomputed); and only the receivers' chosen input sees the sender's new contribution:

1. run the base prompt with the sender patched and all other heads frozen, and record the
   receivers' inputs (their queries, keys or values; or, for the direct path to the logits, the
   residual stream at the end);
2. run the base prompt again, freely, with only those receiver inputs set to the recorded values,
   and read the metric.

For the residual stream at the end, step 1 already is the answer. This is the exact definition,
not TransformerLens's linear approximation (``direct_path_patching``). Both steps batch every
sender head of a layer as rows of one forward pass, widened at the sender's layer as in
``patching``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, ClassVar, Literal, Sequence

import torch
from jaxtyping import Float, Int
from pydantic import Field, field_validator
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.forward import StopForward, run_hooked, run_to_final_resid, setter, widen
from patchstudio.engine.hooks import HookFn, Hooks
from patchstudio.engine.methods.base import Method, PairContext, PairResult, check_heads
from patchstudio.specs import Direction, ReceiverSpec, WholeHeadsSpec, no_duplicates

Receiver = tuple[int, int, str]  # (layer, head, "q" | "k" | "v")


class PathPatchingSpec(WholeHeadsSpec):
    """Path patching (Wang et al. 2022): each sender head's effect through the receivers only.

    Senders are every head (axes layer x head); the component is ``head`` at all positions.
    No receivers: the path ends at the residual stream before the unembedding (direct effect on
    the logits, with MLPs recomputed). ``direction`` 'noise' (as in the paper) patches the
    corrupted sender into the clean run; 'denoise' the reverse."""

    what: ClassVar[str] = "path patching sends from heads"
    unordered: ClassVar[tuple[str, ...]] = ("receivers",)  # patched together: a set
    method: Literal["path_patching"] = "path_patching"
    direction: Direction = "noise"
    receivers: tuple[ReceiverSpec, ...] = Field((), description="Receiver heads' q/k/v inputs; empty = the logits.")

    @field_validator("receivers")
    @classmethod
    def _each_once(cls, value: tuple[ReceiverSpec, ...]) -> tuple[ReceiverSpec, ...]:
        return no_duplicates(value, "receiver", lambda r: f"L{r.layer}H{r.head}.{r.input}")


def _freeze_all(value: Tensor) -> HookFn:
    def freeze(act: Tensor, hook) -> Tensor:
        # contiguous: some output projections (GPT-2's Conv1D) call .view, which a stride-0 batch refuses
        return value.expand_as(act).contiguous()

    return freeze


def _sender_hooks(model, layer: int, rows: int, base_z: dict[str, Tensor], cf_z: dict[str, Tensor]) -> dict[str, list[HookFn]]:
    """Step 1's hooks for the senders at ``layer`` (row i = head i): the sender's z from the
    counterfactual run, every head of every later layer frozen at the base run."""
    name = H.hook_name("head", layer)
    mask = torch.zeros(rows, 1, rows, 1, dtype=torch.bool)
    mask[torch.arange(rows), 0, torch.arange(rows), 0] = True
    hooks: Hooks = defaultdict(list)
    hooks[H.resid_pre_name(layer)].append(widen(rows))
    hooks[name].append(setter(mask, cf_z[name]))
    for later in range(layer + 1, int(model.cfg.n_layers)):
        hooks[H.hook_name("head", later)].append(_freeze_all(base_z[H.hook_name("head", later)]))
    return hooks


def path_patch_sweep(
    model,
    base_tokens: Int[Tensor, "1 pos"],
    base_cache: dict[str, Tensor],
    cf_cache: dict[str, Tensor],
    receivers: Sequence[Receiver],
    readout: Callable[[Tensor], Tensor],
    progress: Callable[[int], None] | None = None,
) -> Float[Tensor, "n_layers_x_n_heads"]:
    """The metric with each sender head's path to the receivers patched, in (layer, head) order.

    ``base_cache``/``cf_cache`` hold every layer's ``attn.hook_z`` (and, for receivers, the base
    run's ``attn.hook_q/k/v`` at the receivers' layers). With no receivers the path ends at the
    residual stream before the unembedding. A sender with no path to any receiver (it sits at or
    after every receiver's layer) leaves the base metric.
    """
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    base_z = {H.hook_name("head", l): base_cache[H.hook_name("head", l)] for l in range(n_layers)}
    cf_z = {H.hook_name("head", l): cf_cache[H.hook_name("head", l)] for l in range(n_layers)}
    with torch.no_grad():
        base_metric = float(readout(run_to_final_resid(model, base_tokens, {}))[0])
        out = torch.full((n_layers, n_heads), base_metric)
        for layer in range(n_layers):
            hooks = _sender_hooks(model, layer, n_heads, base_z, cf_z)
            if not receivers:
                out[layer] = readout(run_to_final_resid(model, base_tokens, hooks)).float().cpu()
            else:
                reached = [r for r in receivers if r[0] > layer]
                if reached:
                    out[layer] = _through_receivers(model, base_tokens, hooks, reached, n_heads, readout)
            if progress is not None:
                progress(n_heads)
    return out.reshape(-1)


def _receiver_name(receiver: Receiver) -> str:
    return H.hook_name({"q": "head_q", "k": "head_k", "v": "head_v"}[receiver[2]], receiver[0])


def _through_receivers(model, tokens, sender_hooks, receivers, rows, readout) -> Tensor:
    # Step 1: record the receivers' inputs with only the sender changed, then stop.
    recorded: dict[str, Tensor] = {}
    last = max(r[0] for r in receivers)
    names = sorted({_receiver_name(r) for r in receivers})

    def recorder(name: str) -> HookFn:
        def record(act: Tensor, hook) -> Tensor:
            recorded[name] = act.clone()
            if len(recorded) == len(names):
                raise StopForward
            return act

        return record

    hooks = {k: list(v) for k, v in sender_hooks.items()}
    for name in names:
        hooks.setdefault(name, []).append(recorder(name))
    run_hooked(model, tokens, hooks)
    assert len(recorded) == len(names), f"receiver hooks did not fire by layer {last}"
    # Step 2: a free run with only the receivers' chosen inputs set to the recorded values.
    first = min(r[0] for r in receivers)
    step2: Hooks = defaultdict(list)
    step2[H.resid_pre_name(first)].append(widen(rows))
    for name in names:
        n_act = recorded[name].shape[2]  # heads along this input's head axis (fewer k/v heads under GQA)
        heads = [activation_head(model, r[1], n_act) for r in receivers if _receiver_name(r) == name]
        mask = torch.zeros(1, 1, n_act, 1, dtype=torch.bool)
        mask[0, 0, heads, 0] = True
        step2[name].append(setter(mask, recorded[name]))
    return readout(run_to_final_resid(model, tokens, step2)).float().cpu()


def activation_head(model, head: int, n_act: int) -> int:
    """The index along an activation's head axis of query head ``head``'s input: itself for q (and
    without grouped-query attention); its key/value group under GQA, where query heads
    g*k .. g*k + k - 1 share key/value head g (k = n_heads / n_key_value_heads)."""
    return head // (int(model.cfg.n_heads) // n_act)


def _gqa_warnings(model, spec) -> tuple[str, ...]:
    n_heads = int(model.cfg.n_heads)
    out = []
    for r in spec.receivers:
        n_kv = H.n_heads_for(model, f"head_{r.input}")
        if r.input in ("k", "v") and n_kv < n_heads:
            group = n_heads // n_kv
            g = r.head // group
            out.append(
                f"Under grouped-query attention, receiver L{r.layer}H{r.head}.{r.input} is {r.input} head {g}, shared by "
                f"query heads {g * group}-{g * group + group - 1}: patching it changes that input for all of them."
            )
    return tuple(out)


def run_pair(ctx: PairContext) -> PairResult:
    spec = ctx.spec
    base_tokens, base_cache, cf_cache = ctx.runs(spec.direction)
    receivers = [(r.layer, r.head, r.input) for r in spec.receivers]
    values = path_patch_sweep(ctx.model, base_tokens, base_cache, cf_cache, receivers, ctx.readout(), progress=ctx.progress)
    return PairResult(values, warnings=_gqa_warnings(ctx.model, spec))


def check(model, spec) -> None:
    """Receivers exist (a receiver names a query head; under grouped-query attention its k/v input
    is its group's key/value head, see ``activation_head``)."""
    check_heads(model, spec.receivers, "receivers", "receiver")


METHOD = Method(
    spec=PathPatchingSpec,
    run_pair=run_pair,
    check=check,
    references=("Wang et al. 2022", "Goldowsky-Dill et al. 2023"),
)
