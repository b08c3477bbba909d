"""Worked examples the explore page offers as links: each is a set of form values over the
defaults. A preset's link (``/?preset=NAME``) fills the form; like every GET it computes nothing,
and shows the result at once when it is stored (else one click on Run computes it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str  # the ?preset= value
    label: str  # the link text
    title: str  # what it shows, for the tooltip and the page
    model: str  # shown only where this model is offered
    form: dict[str, str] = field(default_factory=dict)  # form values over DEFAULT_FORM


# One experiment, two models: mean-ablate L2H2 on 16 generated IOI prompts (docs/self-repair.md).
_SELF_REPAIR = {"source": "family", "family": "ioi_swap", "n_pairs": "16", "family_seed": "7", "template": "0",
                "method": "self_repair", "targets": "L2H2", "compensator": "", "ablation": "mean", "seed": "0",
                "metric": "logit_diff"}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "ioi-heads",
            "IOI heads",
            "Activation patching of every head's output on 8 IOI prompts (names swapped), as a share of the gap",
            "default",
            {"model": "default", "source": "family", "family": "ioi_swap", "n_pairs": "8", "method": "activation_patching",
             "component": "head", "positions": "all", "direction": "denoise"},
        ),
        Preset(
            "ioi-circuit",
            "IOI circuit",
            "The IOI circuit's edges on 8 IOI prompts (names swapped): every edge scored by EAP, the top 20 patched "
            "exactly, and the faithfulness of the top-n circuits with every other edge patched from the corrupted run",
            "default",
            {"model": "default", "source": "family", "family": "ioi_swap", "n_pairs": "8", "method": "circuit",
             "direction": "noise", "steps": "1", "top_k": "20", "faithfulness": "patching"},
        ),
        Preset(
            "self-repair",
            "Self-repair view",
            "On the hydra model, mean-ablate L2H2 on 16 IOI prompts: the metric drops by much less than L2H2's "
            "direct effect, because L3H4 steps in (on these prompts its direct effect grows by 87% of what L2H2's lost; "
            "on a typical prompt by about 70%). Pair-ablate "
            "L3H4 to see the paired ablation cost far more than the two single ones",
            "hydra",
            {"model": "hydra", **_SELF_REPAIR},
        ),
        Preset(
            "no-self-repair",
            "No self-repair (default model)",
            "The same experiment on the default model: mean-ablate L2H2 on 16 IOI prompts. Its total effect is about "
            "twice its direct effect, the difference mostly through MLP2 and MLP3 (L2H2's own indirect path and any "
            "response: one ablation cannot tell them apart); no head repairs it",
            "default",
            {"model": "default", **_SELF_REPAIR},
        ),
    )
}


def offered(models: list[str]) -> list[Preset]:
    """The presets whose model this server offers."""
    return [p for p in PRESETS.values() if p.model in models]
