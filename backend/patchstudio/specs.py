"""The experiment spec: one JSON object that names a causal intervention completely.

The spec is the public contract shared by the CLI, the Python API, the JSON API and share links.
It is data, never code: frozen pydantic models with extra fields forbidden, discriminated by
``method``. Its canonical JSON (defaults filled in, keys sorted, no whitespace) hashes to the
experiment's ``id``, which is the permalink: the same experiment always gets the same link.
The canonical form also writes what cannot change the result one way (``SpecBase.canonical_data``):
answers without surrounding whitespace (the engine strips it, NBSP included), lists whose order
means nothing sorted (a method's ``unordered`` fields: path patching's receivers, self-repair's
targets), and fields the spec's settings never read at their defaults (ablation's seed under zero
ablation, or mean ablation of given prompts). Resample's ``draws`` is left out altogether where the
ablation is not resample (``omitted``), so specs written before the field existed keep their ids.
A spec already in that form keeps the id it had.

"The corruption and the metric are part of the claim": both are required parts of every spec,
and every result carries them.

This module holds what every method shares (prompt pairs, components, metrics, the base class).
Each method's own spec class lives with its engine code in ``patchstudio.engine.methods.<name>``
and registers itself here with ``@register``; the discriminated union, ``parse_spec`` and the
JSON schema are derived from that registry, so adding a method never touches this file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from typing import Annotated, Any, Callable, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic_core import to_jsonable_python

from patchstudio.models.prompts import role_errors

SCHEMA_VERSION = 1

Component = Literal[
    "head", "head_q", "head_k", "head_v", "pattern",
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "layer",
]
Metric = Literal["logit_diff", "normalized_logit_diff", "prob", "loss", "kl"]
Positions = Literal["all", "each"]
# Positions picked by role name ("S2", "END") or token index; the spec keeps them sorted and each once
PositionPicks = tuple[Union[int, str], ...]
MAX_POSITION_PICKS = 64
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
# The same metrics where an answer has several tokens: teacher-forced sequence log-probabilities
# (engine/metrics.py); the KL metric never reads the answers.
SEQUENCE_METRIC_LABELS = {
    "logit_diff": "log P(answer) − log P(wrong), summed over their tokens",
    "normalized_logit_diff": "sequence log-probability difference, 0 = corrupted, 1 = clean",
    "prob": "P(answer), product over its tokens",
    "loss": "−log P(answer), summed over its tokens",
    "kl": METRIC_LABELS["kl"],
}

# Where the registered methods live: importing this package imports (and so registers) each one.
METHODS_PACKAGE = "patchstudio.engine.methods"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptPair(Frozen):
    """A clean prompt, its corruption, and the two answer tokens the metric compares."""

    clean: str = Field(description="Prompt on which the model shows the behaviour.")
    corrupted: str = Field(description="Same length prompt with the relevant fact altered.")
    answer: str = Field(description="The correct next token on the clean prompt.")
    wrong: str = Field(description="The competing token (the correct one on the corrupted prompt).")
    # A prompt set's role columns (prompt_sets.py): role name -> the clean prompt's word with that role
    # ("John", or "John#2" for its second time). Left out of every dump when empty, so a pair without
    # roles keeps the spec id it always had.
    roles: dict[str, str] = Field(default_factory=dict, exclude_if=lambda value: not value,
                                  description="Roles named by the user: role -> a word of the clean prompt "
                                  "('word', or 'word#n' for its n-th time); a per-position sweep puts the role's "
                                  "cell at that word in this prompt.")

    @field_validator("clean", "corrupted", "answer", "wrong")
    @classmethod
    def _not_blank(cls, value: str, info: Any) -> str:
        if not value.strip():
            raise ValueError(f"{info.field_name} is empty")
        return value

    @field_validator("wrong")
    @classmethod
    def _differs_from_answer(cls, value: str, info: Any) -> str:
        answer = info.data.get("answer")  # absent when the answer itself was invalid
        if answer is not None and answer.strip() == value.strip():
            raise ValueError(
                f"wrong is the answer itself ({value.strip()!r}): the metric compares two different tokens, "
                f"so the logit difference would be 0 on every run"
            )
        return value


    @field_validator("roles")
    @classmethod
    def _roles_name_words(cls, value: dict[str, str], info: Any) -> dict[str, str]:
        clean = info.data.get("clean")  # absent when the clean prompt itself was invalid
        bad = role_errors(clean, value) if clean is not None else []
        if bad:
            raise ValueError("; ".join(reason for _, reason in bad))
        return value


class SpecBase(Frozen):
    """Fields every method shares. A method's spec adds ``method: Literal["name"]`` and its own.

    ``unordered``: the method's list fields that are sets (their order cannot change the result):
    the canonical form, and so the id, lists them sorted."""

    unordered: ClassVar[tuple[str, ...]] = ()

    schema_version: Literal[1] = SCHEMA_VERSION
    model: str = Field("default", description="Name of an allowed model ('default' is the shipped one).")
    # Not Field(min_length=1): on a tuple, pydantic counts only the items that validated, so one bad
    # pair also gave a false "Tuple should have at least 1 item ... not 0". Checked after instead.
    prompts: tuple[PromptPair, ...] = Field(description="One or more prompt pairs.", json_schema_extra={"minItems": 1})
    component: Component = "head"
    positions: Union[Positions, PositionPicks] = Field(
        "all",
        description="'all': patch every position at once; 'each': one position at a time, by role across the "
        "prompts (IO, S1, S2, END, ...); or a list of roles and token indices to patch one at a time, e.g. "
        "['S2', 'END'].",
    )
    metric: Metric = "logit_diff"
    # The stored prompt set (prompt_sets.py) the prompts came from, by its content id: the service fills in
    # its pairs. Left out of every dump when absent, so a spec without one keeps the id it always had.
    prompt_set: str | None = Field(None, pattern=r"^[0-9a-f]{16}$", exclude_if=lambda value: value is None,
                                   description="Id of a stored prompt set: its pairs are the prompts.")

    @field_validator("positions", mode="before")
    @classmethod
    def _position_picks(cls, value: Any) -> Any:
        return position_picks(value)

    @field_validator("prompts")
    @classmethod
    def _some_prompts(cls, value: tuple[PromptPair, ...]) -> tuple[PromptPair, ...]:
        if not value:
            raise ValueError("the prompt set is empty: give at least one prompt pair")
        return value

    @property
    def id(self) -> str:
        return spec_id(self)

    def unused(self) -> tuple[str, ...]:
        """Fields this spec's own settings never read (the canonical form writes their defaults).
        A spec with the shared reference fields (ablation, seed, reference) has ``reference_unused``'s."""
        fields = type(self).model_fields
        return reference_unused(self) if {"ablation", "seed", "reference"} <= fields.keys() else ()

    def omitted(self) -> tuple[str, ...]:
        """Fields newer than the ids pinned before them, left out of the canonical form where this
        spec's settings never read them (``draws`` unless the ablation is resample)."""
        fields = type(self).model_fields
        return ("draws",) if "draws" in fields and getattr(self, "ablation", None) != "resample" else ()

    def canonical_data(self) -> dict[str, Any]:
        """The spec as JSON data, with what cannot change its result written one way (module
        docstring): the same for every equivalent spec, and the spec's own dump when it is normal."""
        data = self.model_dump(mode="json")
        for pair in data["prompts"]:
            pair["answer"], pair["wrong"] = pair["answer"].strip(), pair["wrong"].strip()
        for name in self.unordered:
            data[name] = sorted(data[name], key=lambda item: tuple(item.values()) if isinstance(item, dict) else item)
        for name in self.unused():
            data[name] = to_jsonable_python(type(self).model_fields[name].get_default(call_default_factory=True))
        for name in self.omitted():
            del data[name]
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.canonical_data(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def position_picks(value: Any) -> Any:
    """'all' and 'each' as they are; a list of picks as the spec keeps it: indices (an int, or a string
    of digits) and role names (stripped), each once, indices first in order, then names in order. A
    ValueError names what is wrong."""
    if isinstance(value, str):
        if value in ("all", "each"):
            return value
        raise ValueError(f"positions must be 'all', 'each' or a list of roles and indices, e.g. ['S2', 'END']; got {value[:40]!r}")
    if not isinstance(value, (list, tuple)):
        return value  # the type check says what is wrong
    if not value:
        raise ValueError("pick at least one position (a role like 'S2', or an index), or use 'all' or 'each'")
    if len(value) > MAX_POSITION_PICKS:
        raise ValueError(f"{len(value)} positions picked: at most {MAX_POSITION_PICKS}; use 'each' for every position")
    picks: set[int | str] = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"a picked position is a role name or a token index, not {item!r}")
        if isinstance(item, str):
            item = item.strip()
            if item.isdigit():
                item = int(item)
            elif not item or len(item) > 64:
                raise ValueError("a picked role name is empty or longer than 64 characters")
        if isinstance(item, int) and item < 0:
            raise ValueError(f"position {item} is negative: indices count from 0 (the final position is the role END)")
        picks.add(item)
    return tuple(sorted(picks, key=lambda p: (isinstance(p, str), p)))


class HeadRef(Frozen):
    layer: int = Field(ge=0)
    head: int = Field(ge=0)


def no_duplicates(items: tuple, what: str, name: Callable[[Any], str]) -> tuple:
    """``items`` unchanged, or a ValueError naming the first repeated one."""
    seen: set = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{what} {name(item)} is listed twice: list each once")
        seen.add(item)
    return items


class ReferencePrompts(Frozen):
    """An explicit reference set for mean and resample ablation: prompts (strings) of the same token
    length as the spec's prompts."""

    prompts: tuple[str, ...] = Field(
        description="Reference prompts: mean ablation averages over them; resample ablation draws one.",
        json_schema_extra={"minItems": 1},
    )

    @field_validator("prompts")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("give at least one reference prompt")
        if any(not p.strip() for p in value):
            raise ValueError("a reference prompt is empty")
        return value


# "auto": a set generated from the prompts' built-in template when the generator recognises them
# (engine/reference.py), else the spec's own clean and corrupted prompts; or prompts given here.
Reference = Union[Literal["auto"], ReferencePrompts]
REFERENCE_DESCRIPTION = (
    "The reference distribution of mean and resample ablation: 'auto' (a set generated from the prompts' "
    "built-in template, else the spec's own clean and corrupted prompts; the result says which) or "
    "{'prompts': [...]} (same token length as the spec's prompts)."
)


DEFAULT_DRAWS = 8  # resample ablation's draws per prompt: one draw's result moved with the seed
MAX_DRAWS = 64


def draws_field() -> Any:
    return Field(DEFAULT_DRAWS, ge=1, le=MAX_DRAWS, description=(
        "Resample ablation: reference prompts drawn per prompt pair; the pair's value is the mean over "
        "them (other ablations ignore it)."))


def reference_unused(spec: Any) -> tuple[str, ...]:
    """The seed draws resample's reference prompt and generates an 'auto' reference set: zero
    ablation reads no reference at all, and mean ablation of given prompts averages every one."""
    if spec.ablation == "zero" or (spec.ablation == "mean" and spec.reference != "auto"):
        return ("seed",)
    return ()


def check_reference(value: Any, info: Any) -> Any:
    """For a spec's ``reference`` field validator (its ``ablation`` field declared before it)."""
    if value != "auto" and info.data.get("ablation") == "zero":
        raise ValueError("zero ablation uses no reference prompts: leave reference at 'auto' or ablate by mean or resample")
    return value


class ReceiverSpec(Frozen):
    """A receiver of path patching: one head's query, key or value input."""

    layer: int = Field(ge=0)
    head: int = Field(ge=0)
    input: Literal["q", "k", "v"] = "q"


class OneComponentSpec(SpecBase):
    """Methods that read one kind of component (``only``) at every position: positions 'all'."""

    what: ClassVar[str] = "this method works on one component"
    only: ClassVar[str]

    @field_validator("component")
    @classmethod
    def _only(cls, value: str) -> str:
        if value != cls.only:
            raise ValueError(f"{cls.what}: component must be {cls.only!r}")
        return value

    @field_validator("positions")
    @classmethod
    def _all_positions(cls, value: str) -> str:
        if value != "all":
            raise ValueError(f"{cls.what}, at every position: positions must be 'all'")
        return value


class WholeHeadsSpec(OneComponentSpec):
    """Methods whose units are whole heads (every position): component 'head', positions 'all'."""

    what: ClassVar[str] = "this method works on whole heads"
    only: ClassVar[str] = "head"


# --- the registry -----------------------------------------------------------------------------------

_REGISTRY: dict[str, type[SpecBase]] = {}
_ADAPTER: TypeAdapter | None = None


def register(cls: type[SpecBase]) -> type[SpecBase]:
    """Class decorator for a method's spec: its ``method`` default is its discriminator tag."""
    global _ADAPTER
    tag = cls.model_fields["method"].default
    _REGISTRY[tag] = cls
    _ADAPTER = None
    return cls


def spec_classes() -> dict[str, type[SpecBase]]:
    """method name -> spec class, in registration order (the order methods are offered)."""
    if not _REGISTRY:
        importlib.import_module(METHODS_PACKAGE)
    return dict(_REGISTRY)


def method_names() -> list[str]:
    return list(spec_classes())


def _adapter() -> TypeAdapter:
    global _ADAPTER
    if _ADAPTER is None:
        classes = tuple(spec_classes().values())
        _ADAPTER = TypeAdapter(Annotated[Union[classes], Field(discriminator="method")])  # type: ignore[valid-type]
    return _ADAPTER


def parse_spec(data: Any) -> SpecBase:
    """A spec from a dict, a JSON string or a spec object. ``method`` defaults to activation_patching."""
    if isinstance(data, SpecBase):
        return data
    if isinstance(data, (str, bytes)):
        data = json.loads(data)
    if isinstance(data, dict) and "method" not in data:
        data = {**data, "method": "activation_patching"}
    return _adapter().validate_python(data)


def spec_id(spec: SpecBase) -> str:
    """Content address of a spec: the first 16 hex digits of the sha256 of its canonical JSON."""
    return hashlib.sha256(spec.canonical_json().encode("utf-8")).hexdigest()[:16]


def spec_json_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON schema of every spec (``ref_template`` places its definitions, e.g. under an OpenAPI
    document's ``#/components/schemas/{model}``)."""
    return _adapter().json_schema(ref_template=ref_template)


def defaults_doc() -> dict[str, str]:
    """Each optional field's default, with the methods that have it: for the API docs."""
    seen: dict[str, dict[str, list[str]]] = {}
    for name, cls in spec_classes().items():
        for field, info in cls.model_fields.items():
            if field in ("method", "schema_version", "prompts") or info.is_required():
                continue
            default = info.default
            shown = json.dumps(default if not isinstance(default, tuple) else list(default), default=str)
            seen.setdefault(field, {}).setdefault(shown, []).append(name)
    out = {}
    for field, by_value in seen.items():
        out[field] = "; ".join(
            value if len(by_value) == 1 and len(methods) == len(spec_classes()) else f"{value} ({', '.join(methods)})"
            for value, methods in by_value.items()
        )
    return out


def __getattr__(name: str) -> Any:
    """``from patchstudio.specs import AblationSpec`` still works: spec classes by class name."""
    for cls in spec_classes().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'patchstudio.specs' has no attribute {name!r}")
