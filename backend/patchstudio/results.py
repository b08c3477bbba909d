"""Typed results: axes, labels, values and baselines. Tensors become lists here and nowhere else."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

from patchstudio.specs import SpecBase, parse_spec

# Any registered method's spec: validated through the registry's union, dumped as its own fields.
AnySpec = Annotated[
    SpecBase,
    PlainValidator(parse_spec),
    PlainSerializer(lambda spec: spec.model_dump(mode="json"), return_type=dict),
    WithJsonSchema({"type": "object", "description": "The experiment spec (see the spec schema)."}),
]


class PromptTokens(BaseModel):
    model_config = ConfigDict(frozen=True)

    clean: list[str]
    corrupted: list[str]
    answer: str
    wrong: str
    differ: list[int] = Field(description="Positions where the clean and corrupted tokens differ.")
    answer_tokens: int = Field(1, description="Tokens of the answer as it follows the prompt (more than 1: scored as a sequence).")
    wrong_tokens: int = Field(1, description="Tokens of the wrong answer as it follows the prompt.")


class ModelInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    n_ctx: int
    d_vocab: int
    architecture: str | None = Field(None, description="Hugging Face architecture (e.g. GPT2LMHeadModel); None for native models.")
    device: str = Field("cpu", description="torch device the values were computed on.")
    dtype: str = Field("float32", description="the model's dtype (float32, bfloat16, float16).")


class PositionRole(BaseModel):
    """A cell of a per-position sweep's position axis: a role across the prompts."""

    model_config = ConfigDict(frozen=True)

    role: str = Field(description="The role (IO, S1, S2, END, a template word, ...) or the token index picked.")
    n: int = Field(description="How many prompts the cell averages.")
    at: list[list[int]] = Field(description="Its token positions in each prompt.")


class PatchResult(BaseModel):
    """The outcome of one experiment. ``values`` is a nested list in ``axes`` order, averaged over
    the prompt set; ``clean`` and ``corrupted`` are the metric on the unpatched runs.

    Spread over the prompts, each in ``values``' nested shape: ``per_prompt`` (one more axis in
    front, the prompt: ``per_prompt[i]`` is prompt i's sweep), ``std`` (the sample standard
    deviation over the prompts, n - 1 in the denominator; 0 for a single prompt) and
    ``ci_low``/``ci_high``, a 95% interval of the mean over the prompts, of the kind ``ci_method``
    names (``engine.stats``: a studentised bootstrap, 1,000 resamples of the prompts with a fixed
    seed, never narrower than the Student t interval; for a single prompt it collapses to the
    value). Under ``normalized_logit_diff`` the
    per-prompt values are normalised with the same set-level clean and corrupted means as
    ``values``, so ``values`` is exactly their mean. Results stored before these fields existed
    have them as None.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    spec: AnySpec
    axes: list[str]
    labels: dict[str, list[str]]
    values: Any
    clean: float
    corrupted: float
    per_prompt_clean: list[float]
    per_prompt_corrupted: list[float]
    prompts: list[PromptTokens]
    model: ModelInfo
    versions: dict[str, str]
    seconds: float = Field(description="Wall time of the computation.")
    extras: dict[str, Any] | None = Field(None, description="Method-specific summaries (self-repair: TE, DE, ...).")
    per_prompt: Any = Field(None, description="Each prompt's values: [prompt][...axes].")
    std: Any = Field(None, description="Per cell: sample standard deviation over the prompts (0 for one prompt).")
    ci_low: Any = Field(None, description="Per cell: lower end of a 95% interval of the mean over the prompts.")
    ci_high: Any = Field(None, description="Per cell: upper end of a 95% interval of the mean over the prompts.")
    ci_method: str | None = Field(
        None,
        description="Which interval ci_low/ci_high are (engine.stats.CI_METHOD); None: stored before this field, "
        "when the interval was a percentile bootstrap.",
    )
    reference: dict[str, Any] | None = Field(
        None,
        description="Mean/resample ablation's reference set: {kind: generated | given | own, n, description}.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What limits the reading: degenerate input, a small gap, an own-prompts reference, half "
        "precision (a gap or effects within the dtype's rounding noise).",
    )
    roles: list[PositionRole] | None = Field(
        None,
        description="A per-position sweep's position axis, cell by cell: the role, how many prompts it averages "
        "and where it is in each prompt (positions are aligned by role, never by index). None without a "
        "position axis, and for results stored before roles existed (their axis is by token index).",
    )


def to_nested(values, sizes: list[int]) -> Any:
    """A flat tensor/sequence in row-major order -> nested Python lists of floats of shape ``sizes``."""
    if hasattr(values, "is_floating_point") and values.is_floating_point():  # a float tensor
        flat = values.reshape(-1).tolist()  # already Python floats
    else:
        flat = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]

    def build(offset: int, dims: list[int]) -> Any:
        if not dims:
            return flat[offset]
        if len(dims) == 1:  # the innermost axis as one slice: a circuit run's 32,491 edges are one axis
            return flat[offset : offset + dims[0]]
        step = 1
        for d in dims[1:]:
            step *= d
        return [build(offset + i * step, dims[1:]) for i in range(dims[0])]

    return build(0, sizes)
