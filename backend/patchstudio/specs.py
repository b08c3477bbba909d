"""The experiment spec: one JSON object that names a causal intervention completely.

The spec is the public contract shared by the CLI, the Python API, the JSON API and share links.
It is data, never code: frozen pydantic models with extra fields forbidden, discriminated by
``method``. Its canonical JSON (defaults filled in, keys sorted, no whitespace) hashes to the
experiment's ``id``, which is the permalink: the same experiment always gets the same link.

"The corruption and the metric are part of the claim": both are required parts of every spec,
and every result carries them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SCHEMA_VERSION = 1

Component = Literal[
    "head", "head_q", "head_k", "head_v", "pattern",
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "layer",
]
Metric = Literal["logit_diff", "normalized_logit_diff", "prob", "loss", "kl"]
Positions = Literal["all", "each"]
Direction = Literal["denoise", "noise"]
AblationKind = Literal["zero", "mean", "resample"]

COMPONENTS: tuple[str, ...] = Component.__args__  # type: ignore[attr-defined]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]

# Plain-language descriptions, shown next to every result.
COMPONENT_LABELS = {
    "head": "attention head output (z)",
    "head_q": "attention head queries (q)",
    "head_k": "attention head keys (k)",
    "head_v": "attention head values (v)",
    "pattern": "attention head pattern",
    "resid_pre": "residual stream before the layer",
    "resid_mid": "residual stream between attention and MLP",
    "resid_post": "residual stream after the layer",
    "attn_out": "attention layer output",
    "mlp_out": "MLP layer output",
    "layer": "whole block's contribution",
}
METRIC_LABELS = {
    "logit_diff": "logit(answer) − logit(wrong)",
    "normalized_logit_diff": "logit difference, 0 = corrupted, 1 = clean",
    "prob": "P(answer)",
    "loss": "−log P(answer)",
    "kl": "KL(clean ‖ run) at the final position",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptPair(_Frozen):
    """A clean prompt, its corruption, and the two answer tokens the metric compares."""

    clean: str = Field(description="Prompt on which the model shows the behaviour.")
    corrupted: str = Field(description="Same length prompt with the relevant fact altered.")
    answer: str = Field(description="The correct next token on the clean prompt.")
    wrong: str = Field(description="The competing token (the correct one on the corrupted prompt).")

    @field_validator("clean", "corrupted", "answer", "wrong")
    @classmethod
    def _not_blank(cls, value: str, info: Any) -> str:
        if not value.strip():
            raise ValueError(f"{info.field_name} is empty")
        return value


class _SpecBase(_Frozen):
    schema_version: Literal[1] = SCHEMA_VERSION
    model: str = Field("default", description="Name of an allowed model ('default' is the shipped one).")
    # Not Field(min_length=1): on a tuple, pydantic counts only the items that validated, so one bad
    # pair also gave a false "Tuple should have at least 1 item ... not 0". Checked after instead.
    prompts: tuple[PromptPair, ...] = Field(description="One or more prompt pairs.", json_schema_extra={"minItems": 1})
    component: Component = "head"
    positions: Positions = Field("all", description="'all': patch every position at once; 'each': one position at a time.")
    metric: Metric = "logit_diff"

    @field_validator("prompts")
    @classmethod
    def _some_prompts(cls, value: tuple[PromptPair, ...]) -> tuple[PromptPair, ...]:
        if not value:
            raise ValueError("the prompt set is empty: give at least one prompt pair")
        return value

    @property
    def id(self) -> str:
        return spec_id(self)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ActivationPatchingSpec(_SpecBase):
    """Copy a component's activation from one run into the other (Vig et al. 2020; Meng et al. 2022)."""

    method: Literal["activation_patching"] = "activation_patching"
    direction: Direction = Field(
        "denoise",
        description="'denoise': clean activation into the corrupted run; 'noise': corrupted activation into the clean run.",
    )


class AblationSpec(_SpecBase):
    """Replace a component's activation on the clean run by zero, its mean, or a resampled value."""

    method: Literal["ablation"] = "ablation"
    ablation: AblationKind = Field(
        "mean",
        description="'zero'; 'mean' over all the spec's clean and corrupted prompts; 'resample': the value on another prompt of that set.",
    )
    seed: int = Field(0, description="Seed for 'resample'.")


ATTRIBUTION_COMPONENTS = ("head", "head_q", "head_k", "head_v", "resid_pre", "attn_out", "mlp_out")


class AttributionPatchingSpec(_SpecBase):
    """Linear estimate of activation patching from one backward pass (Nanda 2023; Syed et al. 2023),
    or EAP-IG with ``steps`` > 1 (Hanna et al. 2024)."""

    method: Literal["attribution_patching"] = "attribution_patching"
    direction: Direction = "denoise"
    steps: int = Field(1, ge=1, le=64, description="1: gradient at the base run; more: integrated gradients (EAP-IG).")

    @field_validator("component")
    @classmethod
    def _supported(cls, value: str) -> str:
        if value not in ATTRIBUTION_COMPONENTS:
            raise ValueError(f"attribution patching supports {', '.join(ATTRIBUTION_COMPONENTS)}; not {value!r}")
        return value


class ReceiverSpec(_Frozen):
    """A receiver of path patching: one head's query, key or value input."""

    layer: int = Field(ge=0)
    head: int = Field(ge=0)
    input: Literal["q", "k", "v"] = "q"


class _WholeHeads(_SpecBase):
    """Methods whose units are whole heads (every position): component 'head', positions 'all'."""

    _what: ClassVar[str] = "this method works on whole heads"

    @field_validator("component")
    @classmethod
    def _heads_only(cls, value: str) -> str:
        if value != "head":
            raise ValueError(f"{cls._what}: component must be 'head'")
        return value

    @field_validator("positions")
    @classmethod
    def _all_positions(cls, value: str) -> str:
        if value != "all":
            raise ValueError(f"{cls._what}, at every position: positions must be 'all'")
        return value


class PathPatchingSpec(_WholeHeads):
    """Path patching (Wang et al. 2022): each sender head's effect through the receivers only.

    Senders are every head (axes layer x head); the component is ``head`` at all positions.
    No receivers: the path ends at the residual stream before the unembedding (direct effect on
    the logits, with MLPs recomputed). ``direction`` 'noise' (as in the paper) patches the
    corrupted sender into the clean run; 'denoise' the reverse."""

    _what: ClassVar[str] = "path patching sends from heads"
    method: Literal["path_patching"] = "path_patching"
    direction: Direction = "noise"
    receivers: tuple[ReceiverSpec, ...] = Field((), description="Receiver heads' q/k/v inputs; empty = the logits.")



class InputInfluenceSpec(_SpecBase):
    """Per-token attribution of the metric to the input embeddings of the clean prompt: gradient x
    input (``steps`` 1) or integrated gradients from the corrupted prompt (``steps`` > 1), whose
    shares add up to metric(clean) - metric(corrupted)."""

    method: Literal["input_influence"] = "input_influence"
    component: Literal["resid_pre"] = "resid_pre"
    positions: Literal["each"] = "each"
    steps: int = Field(1, ge=1, le=64, description="1: gradient x input; more: integrated gradients from the corrupted prompt.")


class HeadRef(_Frozen):
    layer: int = Field(ge=0)
    head: int = Field(ge=0)


class SelfRepairSpec(_WholeHeads):
    """Self-repair (McGrath et al. 2023; Rushing & Nanda 2024): ablate target heads on the clean
    run and split the metric's change into the targets' direct effect, each downstream head's and
    MLP's change in direct effect, and the final LayerNorm scale's part. ``compensator``: a head
    ablated together with the targets (paired ablation)."""

    _what: ClassVar[str] = "self-repair ablates heads"
    method: Literal["self_repair"] = "self_repair"
    targets: tuple[HeadRef, ...] = Field(description="The ablated heads.", json_schema_extra={"minItems": 1})
    ablation: AblationKind = "mean"
    seed: int = 0
    compensator: HeadRef | None = None

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, value: tuple[HeadRef, ...]) -> tuple[HeadRef, ...]:
        if not value:
            raise ValueError("give at least one target head")
        return value


    @field_validator("metric")
    @classmethod
    def _linear_metric(cls, value: str) -> str:
        if value != "logit_diff":
            raise ValueError("self-repair splits the logit difference exactly: metric must be 'logit_diff'")
        return value


ExperimentSpec = Annotated[
    Union[ActivationPatchingSpec, AblationSpec, AttributionPatchingSpec, PathPatchingSpec, SelfRepairSpec, InputInfluenceSpec],
    Field(discriminator="method"),
]
_ADAPTER: TypeAdapter[ExperimentSpec] = TypeAdapter(ExperimentSpec)

DEFAULTS_DOC = {
    "model": "default",
    "component": "head",
    "positions": "all",
    "metric": "logit_diff",
    "direction": "denoise (activation_patching)",
    "ablation": "mean (ablation)",
    "seed": "0 (ablation: resample)",
    "steps": "1 (attribution_patching; more = EAP-IG)",
    "receivers": "[] (path_patching: the logits)",
}


AnySpec = Union[
    ActivationPatchingSpec, AblationSpec, AttributionPatchingSpec, PathPatchingSpec, SelfRepairSpec, InputInfluenceSpec
]


def parse_spec(data: Any) -> AnySpec:
    """A spec from a dict, a JSON string or a spec object. ``method`` defaults to activation_patching."""
    if isinstance(data, (ActivationPatchingSpec, AblationSpec, AttributionPatchingSpec, PathPatchingSpec, SelfRepairSpec, InputInfluenceSpec)):
        return data
    if isinstance(data, (str, bytes)):
        data = json.loads(data)
    if isinstance(data, dict) and "method" not in data:
        data = {**data, "method": "activation_patching"}
    return _ADAPTER.validate_python(data)


def spec_id(spec: _SpecBase) -> str:
    """Content address of a spec: the first 16 hex digits of the sha256 of its canonical JSON."""
    return hashlib.sha256(spec.canonical_json().encode("utf-8")).hexdigest()[:16]


def spec_json_schema() -> dict[str, Any]:
    return _ADAPTER.json_schema()
