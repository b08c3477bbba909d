"""What the engine knows about one model, found once: ``profile(model) -> ModelProfile``.

One weak map holds a profile per model and lets it go with the model: what is known about a model
travels on one object (as auto-circuit keeps it on one wrapper), not in per-module side tables.
A profile holds

- the model's **lock**: TransformerLens hooks are attached to the shared model object, so every
  call into the model (forward passes and readouts alike) holds it;
- **facts** read off the config and the hook names: the layers' key and value hooks
  (``kv_names``), causal attention, the final logit soft cap;
- **capability flags**, found together the first time one is asked, from passes on a few fixed
  probe tokens: one plain pass that caches everything the checks read, and one pass per exact
  shortcut of ``engine.fast``, compared with it (the suffix pass; the trimmed last MLP). Where a
  fact rules a check out (no key hooks, parallel blocks), its pass is not run;
- the sweeps' **sites**, built once per component, positions and length.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.fast import suffix_hooks, trim_hooks
from patchstudio.engine.precision import noise_floor

PROBE_TOKENS = 8  # the probe passes' length (fewer where the context is shorter)
MAX_SITE_SHAPES = 64  # sweeps whose sites a profile keeps; more and it starts over

# The flags a profile finds (``ModelProfile.found`` maps each to its value once found).
FLAGS = ("final_logits_ok", "readout_diff", "readout_ok", "resid_mid_is_stream", "heads_add_up", "suffix_ok", "trim_ok")


def soft_cap(model) -> float | None:
    """The model's final logit soft cap (Gemma 2: 30.0), or None (read from its config)."""
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None and float(cap) > 0 else None


def apply_soft_cap(logits: Tensor, cap: float | None) -> Tensor:
    return logits if cap is None else cap * torch.tanh(logits / cap)


def final_logits(model, resid: Tensor, cap: float | None = None) -> Tensor:
    """Logits from final residual vectors as the engine reads them: ``ln_final``, the unembedding
    and (given ``cap``) the soft cap. Checked once per model against the model's own logits."""
    return apply_soft_cap(model.unembed(model.ln_final(resid)), cap)


def same_within_dtype(a: Tensor, b: Tensor) -> bool:
    """Equal up to rounding: 1e-5 in float32, a few units of the last place in half precision."""
    eps = torch.finfo(a.dtype).eps if a.is_floating_point() else 0.0
    tol = max(1e-5, 8 * eps)
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)


class ModelProfile:
    """Everything the engine finds out about one model (see the module docstring)."""

    def __init__(self, model) -> None:
        cfg = model.cfg
        self._model = weakref.ref(model)  # never a strong reference: the profile goes with the model
        self.lock = threading.RLock()
        self.n_layers = int(cfg.n_layers)
        known = getattr(model, "hook_dict", {})
        self.hook_names = frozenset(known)
        kv = [H.k_name(layer) for layer in range(self.n_layers)] + [H.v_name(layer) for layer in range(self.n_layers)]
        # every layer's key and value hooks, or [] if the model lacks any (its passes run whole)
        self.kv_names: list[str] = kv if all(name in known for name in kv) else []
        self.causal = (getattr(cfg, "attention_dir", "causal") or "causal") == "causal"
        self.parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        self.soft_cap = soft_cap(model)
        self.found: dict[str, Any] = {}  # flag -> value, once found (a test may set one beforehand)
        self._sites: dict[tuple, tuple] = {}
        self._stacked: dict[str, tuple[tuple, Tensor | None]] = {}
        self._params: list[Tensor] | None = None
        self._pinned = threading.local()  # .stamp: the parameters' stamp, taken once for the pass under way

    # --- flags, found once ---------------------------------------------------------------------

    @property
    def final_logits_ok(self) -> bool:
        """Whether ``final_logits`` of the final residual (no cap) gives the model's own final
        logits, so that a cached run may unembed the final position only (not so where the forward
        pass does more after them, e.g. a logit soft cap)."""
        return self._flag("final_logits_ok")

    @property
    def readout_diff(self) -> float:
        """The largest difference between the engine's readout (``final_logits`` with the soft cap)
        and the model's own final-position logits on the probe tokens."""
        return self._flag("readout_diff")

    @property
    def readout_ok(self) -> bool:
        """Whether ``readout_diff`` is within the model's rounding noise: an architecture with another
        step there (a logit scale, another cap) would be read wrong, and is refused (``metrics.check_readout``)."""
        return self._flag("readout_ok")

    @property
    def resid_mid_is_stream(self) -> bool:
        """Whether the block has a residual stream between attention and MLP that equals
        resid_pre + attn_out, so that patching it through attn_out is exact. Parallel blocks
        (GPT-NeoX) have no such point."""
        return self._flag("resid_mid_is_stream")

    @property
    def heads_add_up(self) -> bool:
        """Whether attn_out is the sum of the heads' z @ W_O (plus b_O): no norm between the heads
        and the residual stream (Gemma 2 has one)."""
        return self._flag("heads_add_up")

    @property
    def suffix_ok(self) -> bool:
        """Whether suffix passes (``fast.suffix_hooks``) give this model's full-pass values (the
        tolerance scales with the model's precision)."""
        return self._flag("suffix_ok")

    @property
    def trim_ok(self) -> bool:
        """Whether feeding the last block's MLP the final position alone (``fast.trim_hooks``)
        leaves the final residual unchanged (not so for parallel blocks, or anything else a
        trimmed MLP input would change: those keep the full, exact, slower pass)."""
        return self._flag("trim_ok")

    def suffix_supported(self, seq_len: int) -> bool:
        """Whether a pass over a suffix of a ``seq_len``-token prompt is exact; under two tokens
        there is nothing to cut (answered without probing)."""
        return int(seq_len) >= 2 and self.suffix_ok

    def _flag(self, name: str) -> Any:
        if name not in self.found:
            with self.lock:
                if name not in self.found:
                    self._find()
        return self.found[name]

    @property
    def probe_tokens(self) -> Tensor:
        """[1, n]: the tokens 0..n-1 (modulo the vocabulary), n = PROBE_TOKENS or the context if shorter."""
        model = self._live()
        n = min(PROBE_TOKENS, int(model.cfg.n_ctx))
        return (torch.arange(n) % int(model.cfg.d_vocab)).reshape(1, n).to(model.cfg.device)

    def _find(self) -> None:
        """Every flag, from one plain probe pass and one pass per shortcut (a flag already set is kept)."""
        model = self._live()
        n = self.n_layers
        final = H.resid_post_name(n - 1)
        mid = H.resid_mid_name(0)
        has_mid = mid in self.hook_names and not self.parallel
        names = [final, H.resid_pre_name(0), *([mid] if has_mid else [])]
        names += [H.attn_out_name(layer) for layer in range(n)] + [H.z_name(layer) for layer in range(n)]
        names += self.kv_names
        names = [name for name in dict.fromkeys(names) if name in self.hook_names]
        tokens = self.probe_tokens
        seq_len = int(tokens.shape[-1])
        # two rows, as a pass has (slices of a batch are not contiguous)
        rows = tokens.expand(2, seq_len)
        logits, cache = own_pass(model, rows, names)
        full_logits = logits[:, -1, :].float()
        resid = cache[final]
        full = resid[:, -1, :]
        found: dict[str, Any] = {}
        with torch.no_grad():
            found["final_logits_ok"] = _final_logits_ok(model, resid, full_logits)
            ours = final_logits(model, full, self.soft_cap).float()
            found["readout_diff"] = diff = float((ours - full_logits).abs().max())
            found["readout_ok"] = diff <= max(1e-4, 8 * noise_floor(model, float(full_logits.abs().max())))
            found["resid_mid_is_stream"] = has_mid and same_within_dtype(
                cache[mid][:1], cache[H.resid_pre_name(0)][:1] + cache[H.attn_out_name(0)][:1]
            )
            found["heads_add_up"] = _heads_add_up(model, cache, n)
            found["suffix_ok"] = self.causal and bool(self.kv_names) and seq_len >= 2 and _suffix_ok(
                model, rows, full, {name: cache[name][:1] for name in self.kv_names}
            )
            trim_name = H.resid_mid_name(n - 1)
            found["trim_ok"] = trim_name in self.hook_names and not self.parallel and _trim_ok(model, rows, full)
        for name, value in found.items():
            self.found.setdefault(name, value)

    # --- the sweeps' sites -------------------------------------------------------------------------

    def sites(self, component: str, positions: Any, seq_len: int,
              groups: tuple[tuple[int, ...], ...] | None = None) -> tuple[list[H.Site], list[str], list[int]]:
        """``hooks.sites``, built once per shape (a run asks for them to price, to label and to
        sweep; the masks are shared, never modified). Per position, ``groups`` are the cells'
        token positions (a pair's roles, ``inputs.role_axis``)."""
        per_pos = positions != "all"
        key = (component, per_pos, int(seq_len), groups if per_pos else None)
        built = self._sites.get(key)
        if built is None:
            if len(self._sites) >= MAX_SITE_SHAPES:
                self._sites.clear()
            built = self._sites[key] = H.sites(self._live(), component, positions, seq_len, groups if per_pos else None)
        out, axes, sizes = built
        return list(out), list(axes), list(sizes)

    # --- stacked weights ---------------------------------------------------------------------------

    def stacked(self, name: str) -> Tensor | None:
        """``model.<name>`` (W_Q, b_K, W_O ...: every layer's weights, stacked; None where the model
        has none), detached, kept until a parameter changes. A TransformerBridge stacks the blocks'
        parameters afresh on every read, which costs more than the edge sweeps' arithmetic; checking
        every parameter for a change costs ~0.2 ms, so a pass reads them ``pinned``."""
        stamp = getattr(self._pinned, "stamp", None) or self._stamp()
        kept = self._stacked.get(name)
        if kept is None or kept[0] != stamp:
            value = getattr(self._live(), name, None)
            kept = self._stacked[name] = (stamp, value.detach() if value is not None else None)
        return kept[1]

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Within it (one pass or sweep, on this thread), the parameters are checked for a change once,
        on entry, not at every ``stacked`` read: nothing updates a model during a pass."""
        if getattr(self._pinned, "stamp", None) is not None:  # nested: the outer pass's check holds
            yield
            return
        self._pinned.stamp = self._stamp()
        try:
            yield
        finally:
            self._pinned.stamp = None

    def _stamp(self) -> tuple:
        if self._params is None:
            self._params = list(self._live().parameters())  # walking the module tree costs as much as stacking
        return tuple((p.data_ptr(), p._version) for p in self._params)  # an in-place update bumps _version

    def _live(self):
        model = self._model()
        if model is None:  # pragma: no cover - a profile is only reached through its model
            raise RuntimeError("the model of this profile is gone")
        return model


_PROFILES: "weakref.WeakKeyDictionary[object, ModelProfile]" = weakref.WeakKeyDictionary()
_PROFILES_GUARD = threading.Lock()


def profile(model) -> ModelProfile:
    """The model's profile (made on first use; it lives as long as the model)."""
    found = _PROFILES.get(model)
    if found is not None:
        return found
    with _PROFILES_GUARD:
        found = _PROFILES.get(model)
        if found is None:
            found = _PROFILES[model] = ModelProfile(model)
        return found


def model_lock(model) -> threading.RLock:
    """The (re-entrant) lock every call into ``model`` holds."""
    return profile(model).lock


def own_pass(model, tokens: Tensor, names, hooks: H.Hooks | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The model's own gradient-free forward pass with ``hooks``, holding its lock: (logits at every
    position, {name: activation} for ``names``)."""
    with model_lock(model), torch.no_grad(), model.hooks(fwd_hooks=H.fwd_hooks(hooks)):
        logits, cache = model.run_with_cache(tokens, names_filter=list(names))
    return logits, {name: cache[name] for name in names}


# --- the checks, on the probe pass's readings ---------------------------------------------------


def _final_resid(model, tokens: Tensor, hooks: H.Hooks) -> Tensor:
    final = H.resid_post_name(int(model.cfg.n_layers) - 1)
    return own_pass(model, tokens, [final], hooks)[1][final][:, -1, :]


def _final_logits_ok(model, resid: Tensor, full_logits: Tensor) -> bool:
    try:
        cut = final_logits(model, resid[:, -1:, :])[:, -1, :].float()
    except Exception:  # anything that does not take it keeps the model's own pass
        return False
    return cut.shape == full_logits.shape and torch.allclose(cut, full_logits, atol=1e-4, rtol=1e-5)


def _heads_add_up(model, cache: dict[str, Tensor], n_layers: int) -> bool:
    try:
        w_o, b_o = model.W_O.detach(), getattr(model, "b_O", None)
        eps = torch.finfo(w_o.dtype).eps
        for layer in range(n_layers):
            out = cache[H.attn_out_name(layer)][0].float()
            summed = torch.einsum("phd,hdm->pm", cache[H.z_name(layer)][0], w_o[layer]).float()
            if b_o is not None:
                summed = summed + b_o[layer].detach().float()
            if not bool((summed - out).abs().max() <= max(1e-4, 8 * eps) * max(1.0, float(out.abs().max()))):
                return False
    except (KeyError, AttributeError, RuntimeError):  # no per-head outputs to add up: not exact
        return False
    return True


def _suffix_ok(model, rows: Tensor, full: Tensor, kv: dict[str, Tensor]) -> bool:
    seq_len = int(rows.shape[-1])
    try:
        before, after = suffix_hooks(model, seq_len // 2, seq_len, kv)
        cut = _final_resid(model, rows, H.merge(before, after))
    except Exception:  # an attention that does not take these hooks runs whole sequences
        return False
    eps = torch.finfo(full.dtype).eps if full.is_floating_point() else 1e-7
    tol = max(1e-5, 50 * eps) * (float(full.abs().max()) + 1.0)
    return cut.shape == full.shape and float((cut.float() - full.float()).abs().max()) <= tol


def _trim_ok(model, rows: Tensor, full: Tensor) -> bool:
    try:
        trimmed = _final_resid(model, rows, trim_hooks(model))
    except (RuntimeError, ValueError, IndexError):  # shapes the block cannot take: full pass
        return False
    return same_within_dtype(trimmed, full)
