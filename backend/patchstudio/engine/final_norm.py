"""The final norm with its scale frozen: what makes a part's direct effect on the logits linear.

LayerNorm and RMSNorm divide the residual stream by its own scale. Frozen at a run's value (the
``ln_final.hook_scale`` hook), the final norm is an affine map, so the logits of a sum of parts are
the sum of the parts' logits plus the norm's bias (Elhage et al. 2021; TransformerLens's
``ActivationCache.apply_ln_to_stack``). A model without a final norm (the compiled Tracr models)
reads the residual stream as it is: nothing to freeze, and the sum is exact as well.
"""

from __future__ import annotations

from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.metrics import architecture
from patchstudio.engine.profile import profile
from patchstudio.errors import InputError


def has_scale(model) -> bool:
    """Whether the model's final norm has a scale to freeze (no final norm: nothing to freeze)."""
    return H.LN_FINAL_SCALE in profile(model).hook_names


def scale_names(model) -> list[str]:
    """The hook a run caches to freeze the final norm's scale later ([] without a final norm)."""
    return [H.LN_FINAL_SCALE] if has_scale(model) else []


def frozen(model, cache: dict[str, Tensor], position: int = -1) -> H.Hooks:
    """Hooks that freeze the final norm's scale at ``cache``'s value at ``position`` (for every row
    read), or none for a model without a final norm."""
    if not has_scale(model):
        return {}
    scale = cache[H.LN_FINAL_SCALE][0, position]  # [1]

    def frozen_scale(act: Tensor, hook) -> Tensor:
        return scale.to(act.dtype).expand_as(act)

    return {H.LN_FINAL_SCALE: [frozen_scale]}


def check_freezable(model, what: str) -> None:
    """Refuse (field ``method``) a model whose config names a norm the engine cannot freeze: one
    without a scale hook would be read with its scale recomputed per part, which is not a sum."""
    kind = getattr(model.cfg, "normalization_type", None)
    if kind is not None and not has_scale(model):
        raise InputError(
            f"{what} is not available for {architecture(model)}: its final norm ({kind}) has no scale hook "
            f"({H.LN_FINAL_SCALE}) to freeze, so the logits are not a sum of the parts' contributions",
            field="method",
        )
