"""The explore form -> an experiment spec, with the derived fields the page shows back.

A user types one clean prompt (the corruption can be generated: swap the two names, or "ABC":
other random names; the answers are guessed when the prompt has the IOI shape), or picks a prompt
family: a built-in family the model's tokenizer supports (IOI, induction, greater-than, subject-verb
agreement; ``engine.families``), or their own pairs, one per line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pydantic import ValidationError

from patchstudio.engine.families import family_pairs as family_pairs_on
from patchstudio.errors import InputError, field_errors
from patchstudio.models import prompts as P
from patchstudio.service import check_text
from patchstudio.specs import COMPONENT_LABELS, HeadRef, parse_spec
from patchstudio.web.methods import WEB_METHODS

DEFAULT_FORM: dict[str, str] = {
    "model": "default",
    "source": "pair",
    "clean": "When Mary and John went to the store, John gave a drink to",
    "corruption": "swap",
    "corrupted": "",
    "auto_answers": "on",
    "answer": "",
    "wrong": "",
    "family": "ioi_swap",
    "n_pairs": "8",
    "family_seed": "0",
    "template": "0",
    "pairs_text": "",
    "prompt_set": "",  # the uploaded set the pairs text came from (its id names the data in the spec)
    "method": "activation_patching",
    "component": "head",
    "positions": "all",
    "positions_at": "",
    "direction": "denoise",
    "ablation": "mean",
    "seed": "0",
    "draws": "8",
    "steps": "1",
    "receivers": "",
    "targets": "L2H2",
    "compensator": "",
    "reference": "auto",
    "reference_prompts": "",
    "baseline": "corrupted",
    "run": "clean",
    "top_k": "20",
    "faithfulness": "patching",
    "edges": "",
    "metric": "logit_diff",
}

MAX_FAMILY_PAIRS = 64


@dataclass
class FormState:
    values: dict[str, str]
    spec: Any = None
    error: str | None = None
    error_field: str | None = None
    error_detail: dict[str, Any] = field(default_factory=dict)


def _int(values: Mapping[str, str], name: str, low: int, high: int) -> int:
    raw = values.get(name, "").strip()
    try:
        number = int(raw)
    except ValueError:
        raise InputError(f"{name.replace('_', ' ')} must be a whole number, got {raw!r}", field=name) from None
    if not low <= number <= high:
        raise InputError(f"{name.replace('_', ' ')} must be between {low} and {high}, got {number}", field=name)
    return number


def _pair_from_clean(values: dict[str, str]) -> dict[str, str]:
    clean = values["clean"]
    if not clean.strip():
        raise InputError("the clean prompt is empty", field="clean")
    corruption = values.get("corruption", "custom")
    try:
        if corruption == "swap":
            values["corrupted"] = P.swap_names(clean)
        elif corruption == "abc":
            values["corrupted"] = P.abc_corruption(clean, seed=int(values.get("seed") or 0))
    except ValueError as exc:
        raise InputError(f"cannot generate the corruption: {exc}; choose 'custom' and type one", field="corrupted") from None
    if not values.get("corrupted", "").strip():
        raise InputError("the corrupted prompt is empty", field="corrupted")
    if values.get("auto_answers") == "on":
        guess = P.guess_answers(clean)
        if guess is not None:
            values["answer"], values["wrong"] = guess
    for name in ("answer", "wrong"):
        if not values.get(name, "").strip():
            raise InputError(
                f"the {'answer' if name == 'answer' else 'wrong answer'} is empty (it is guessed only for "
                "IOI-shaped prompts: two names, one of them repeated)",
                field=name,
            )
    return {k: values[k] for k in ("clean", "corrupted", "answer", "wrong")}


def parse_pairs_text(text: str) -> list[dict[str, str]]:
    """One pair per line: ``clean | corrupted | answer | wrong``; for IOI-shaped prompts only the
    clean prompt is needed (corrupted = name swap, answers guessed)."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        clean = parts[0]
        try:
            corrupted = parts[1] if len(parts) > 1 and parts[1] else P.swap_names(clean)
        except ValueError as exc:
            raise InputError(f"line {number}: {exc}", field="pairs_text") from None
        guess = P.guess_answers(clean)
        answer = parts[2] if len(parts) > 2 and parts[2] else (guess[0] if guess else "")
        wrong = parts[3] if len(parts) > 3 and parts[3] else (guess[1] if guess else "")
        if not answer or not wrong:
            raise InputError(f"line {number}: give 'clean | corrupted | answer | wrong'", field="pairs_text")
        pairs.append({"clean": clean, "corrupted": corrupted, "answer": answer, "wrong": wrong})
    if not pairs:
        raise InputError("the prompt list is empty: one pair per line", field="pairs_text")
    return pairs


_RECEIVER = re.compile(r"^L(\d+)\s*H(\d+)(?:\.([qkv]))?$", re.IGNORECASE)


def parse_receivers(text: str) -> list[dict[str, Any]]:
    """'L2H3.q L3H1.k' (comma or space separated; input defaults to q) -> receiver dicts; '' = logits."""
    out = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        match = _RECEIVER.match(item)
        if match is None:
            raise InputError(f"receiver {item!r} is not like 'L2H3.q' (layer, head, and q, k or v)", field="receivers")
        out.append({"layer": int(match[1]), "head": int(match[2]), "input": (match[3] or "q").lower()})
    return out


_HEAD = re.compile(r"^L(\d+)\s*H(\d+)$", re.IGNORECASE)


def parse_heads(text: str, field: str) -> list[dict[str, int]]:
    """'L2H2 L2H7' (comma or space separated) -> [{"layer": 2, "head": 2}, ...]."""
    out = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        match = _HEAD.match(item)
        if match is None:
            raise InputError(f"{field}: {item!r} is not a head like 'L2H3'", field=field)
        out.append({"layer": int(match[1]), "head": int(match[2])})
    return out


def parse_edges(text: str) -> list[str]:
    """'a0.h1->a1.h2<q> input->m0' (comma, space or line separated) -> edge names (checked by the spec)."""
    return [item for item in re.split(r"[,\s]+", text.strip()) if item]


def format_receivers(receivers) -> str:
    return " ".join(f"L{r.layer}H{r.head}.{r.input}" for r in receivers)


def family_pairs(values: dict[str, str], model: Any = None) -> list[dict[str, str]]:
    """The form's family pairs: from the words that are single tokens for ``model``'s tokenizer
    (``engine.families``; a family it cannot make is refused by name), or, without a model, from
    the families' candidate lists (the default model's own words)."""
    name = values.get("family", "ioi_swap")
    if name == "custom":
        return parse_pairs_text(values.get("pairs_text", ""))
    if name not in P.FAMILIES:
        raise InputError(f"unknown prompt family {name!r}", field="family")
    n = _int(values, "n_pairs", 1, MAX_FAMILY_PAIRS)
    seed = _int(values, "family_seed", 0, 10**9)
    options: dict[str, Any] = {}
    if name.startswith("ioi"):
        options["template"] = _int(values, "template", 0, len(P.IOI_TEMPLATES) - 1)
    made = P.FAMILIES[name].make(n, seed=seed, **options) if model is None else family_pairs_on(model, name, n, seed, **options)
    pairs = [p.to_dict() for p in made]
    values["pairs_text"] = "\n".join(" | ".join(p[k] for k in ("clean", "corrupted", "answer", "wrong")) for p in pairs)
    return pairs


def _one_head(text: str) -> dict[str, int] | None:
    heads = parse_heads(text, "compensator")
    if len(heads) > 1:
        raise InputError("give one compensator head, like 'L3H1' (or none)", field="compensator")
    return heads[0] if heads else None


def _head_text(head: HeadRef | None) -> str:
    return f"L{head.layer}H{head.head}" if head is not None else ""


@dataclass(frozen=True)
class FormField:
    """One spec field on the explore form: how it is drawn, read into the spec, and shown back."""

    name: str
    label: str
    widget: str  # "select", "text", "number" or "textarea"
    parse: Callable[[dict[str, str]], Any]  # the form's values -> the spec field's value
    show: Callable[[Any], str] = str  # the spec field's value -> the form's text
    options: tuple[tuple[str, str], ...] = ()  # (value, text) for a select
    title: str = ""
    placeholder: str = ""
    # A form-only input that details another field (the reference prompts of 'reference'): it is
    # read by that field's parse, never put in the spec itself, and shown from ``spec_field``.
    into_spec: bool = True
    spec_field: str = ""  # the spec field shown in it (default: its own name)


def _select(name: str, label: str, options: tuple[tuple[str, str], ...], title: str = "") -> FormField:
    return FormField(name, label, "select", parse=lambda values: values[name], options=options, title=title)


def _number(name: str, label: str, low: int, high: int, title: str = "") -> FormField:
    return FormField(name, label, "number", parse=lambda values: _int(values, name, low, high), title=title)


def parse_reference(values: Mapping[str, str]) -> Any:
    """'auto' (generated from the prompts' template), or the user's own prompts, one per line."""
    choice = values.get("reference", "auto")
    if choice == "auto":
        return "auto"
    if choice != "own":
        raise InputError(f"reference must be 'auto' or 'own', got {choice[:40]!r}", field="reference")
    prompts = [line.strip() for line in values.get("reference_prompts", "").splitlines() if line.strip()]
    if not prompts:
        raise InputError("the reference prompt list is empty: give one prompt per line (the same token length as "
                         "your prompts), or use the prompts generated from the template", field="reference_prompts")
    return {"prompts": prompts}


_PICK_SEPARATORS = re.compile(r"[,;\s]+")


def parse_positions(values: Mapping[str, str]) -> Any:
    """'all', 'each', or ('chosen') the positions typed: roles and indices, 'S2 and END', '2, 10'."""
    choice = values.get("positions", "all")
    if choice in ("all", "each"):
        return choice
    if choice != "chosen":
        raise InputError(f"positions must be 'all', 'each' or 'chosen', got {choice[:40]!r}", field="positions")
    picks = [p for p in _PICK_SEPARATORS.split(values.get("positions_at", "")) if p and p.lower() != "and"]
    if not picks:
        raise InputError("type the positions to patch: roles like 'S2 and END' or token indices like '2, 10'",
                         field="positions_at")
    return picks


# Every spec field a method may put on the form (each method's web module lists the ones it takes).
FIELDS: dict[str, FormField] = {
    f.name: f
    for f in (
        _select("component", "Component", tuple((c, c) for c in COMPONENT_LABELS), "the activation intervened on"),
        FormField("positions", "Positions", "select", parse=parse_positions,
                  show=lambda p: p if isinstance(p, str) else "chosen",
                  options=(("all", "all at once"), ("each", "each position, by role"), ("chosen", "chosen positions (below)")),
                  title="each position is aligned by role across the prompts (IO, S1, S2, END, ...), never by index"),
        FormField("positions_at", "Chosen positions", "text", parse=lambda v: None,
                  show=lambda p: "" if isinstance(p, str) else ", ".join(str(x) for x in p), into_spec=False,
                  spec_field="positions", title="roles (IO, S1, S2, END, a template word) or token indices, each patched on its own",
                  placeholder="S2, END"),
        _select("direction", "Direction", (("denoise", "denoise (clean → corrupted run)"), ("noise", "noise (corrupted → clean run)"))),
        _select("ablation", "Ablation", (("zero", "zero"), ("mean", "mean"), ("resample", "resample"))),
        _number("seed", "Seed", 0, 10**9, "seed for resample ablation"),
        _number("draws", "Draws", 1, 64, "resample ablation: reference prompts drawn per prompt pair, averaged"),
        _number("steps", "IG steps", 1, 64, "1: gradient at the base run; more: node-level integrated gradients over that many points"),
        FormField("receivers", "Receivers (blank = logits)", "text", parse=lambda v: parse_receivers(v.get("receivers", "")),
                  show=lambda receivers: format_receivers(receivers), title="e.g. L3H0.q L3H5.k; blank: the path ends at the logits",
                  placeholder="L3H0.q L3H5.k"),
        FormField("targets", "Target heads", "text", parse=lambda v: parse_heads(v.get("targets", ""), "targets"),
                  show=lambda targets: " ".join(_head_text(t) for t in targets), title="heads to ablate, e.g. L2H2 L2H7"),
        FormField("compensator", "Compensator", "text", parse=lambda v: _one_head(v.get("compensator", "")),
                  show=_head_text, title="paired ablation: also ablate this head", placeholder="L3H1"),
        FormField("reference", "Reference prompts (mean, resample)", "select", parse=parse_reference,
                  show=lambda ref: "auto" if ref == "auto" else "own",
                  options=(("auto", "generated from the template (default)"), ("own", "my own prompts (below)")),
                  title="the distribution mean ablation averages over and resample ablation draws from; zero ablation uses none"),
        FormField("reference_prompts", "My reference prompts, one per line", "textarea", parse=lambda v: None,
                  show=lambda ref: "" if ref == "auto" else "\n".join(ref.prompts), into_spec=False, spec_field="reference",
                  title="same token length as your prompts", placeholder="When Anna and Tom went to the park , Tom gave a ring to"),
        _select("baseline", "Baseline input", (("corrupted", "the corrupted prompt (default)"), ("zero", "zero input")),
                "what each token's influence is measured from: the shares add up to metric(clean) − metric(baseline)"),
        _select("run", "Run read", (("clean", "the clean run"), ("corrupted", "the corrupted run")),
                "the one run the logit lens or direct logit attribution reads (nothing is patched)"),
        _number("top_k", "Edges verified exactly", 0, 1000, "the edges with the largest estimates, each patched alone"),
        _select("faithfulness", "Edges outside a circuit", (("patching", "patched from the corrupted run"),
                                                             ("mean", "mean-ablated over the reference prompts")),
                "what the faithfulness curve replaces every edge outside each circuit with"),
        FormField("edges", "Edges", "textarea", parse=lambda v: parse_edges(v.get("edges", "")), show=lambda edges: "\n".join(edges),
                  title="one per line, as the circuit graph names them", placeholder="a0.h1->a1.h2<q>\ninput->m0\nm1->logits"),
    )
}

# The form's own inputs (prompts), then every spec field: each has a slot for its error message.
PROMPT_FIELDS = ("model", "clean", "corrupted", "answer", "wrong", "family", "n_pairs", "family_seed", "template", "pairs_text", "prompts")
ERROR_FIELDS = (*PROMPT_FIELDS, "method", *FIELDS, "metric", "spec")


def methods_with(field_name: str) -> list[str]:
    """The methods whose spec takes this form field (the field is shown only for them)."""
    return [name for name, web in WEB_METHODS.items() if field_name in web.fields]


def form_field_of(spec_path: str, source: str) -> str:
    """The form field that shows an error at a spec path ('prompts.0.answer' -> 'answer' for one
    pair, 'pairs_text' for a list; 'receivers.1.layer' -> 'receivers')."""
    parts = spec_path.split(".") if spec_path else []
    if not parts:
        return "spec"
    if parts[0] == "prompts" and len(parts) > 2:
        return parts[2] if source == "pair" else "pairs_text"
    return parts[0] if parts[0] in ERROR_FIELDS else "spec"


def check_form_limits(form: Mapping[str, str], max_chars: int, max_prompts: int) -> None:
    """The server's limits on the raw form, before anything is generated, parsed or tokenized: each
    text's length (the pair list: ``max_prompts`` lines of four texts), its line count, valid Unicode."""
    for name, value in form.items():
        if name in ("pairs_text", "reference_prompts"):
            lines = value.count("\n") + 1
            if lines > max_prompts:
                raise InputError(f"the prompt list has {lines:,} lines; this server takes at most {max_prompts:,} pairs", field=name)
            check_text(value, name, max_prompts * (4 * max_chars + 8))
        else:
            check_text(value, name, max_chars)


def spec_from_form(form: Mapping[str, Any], model: Any = None) -> FormState:
    """The spec the form describes; a family's pairs are made for ``model``'s tokenizer when given."""
    values = {**DEFAULT_FORM, **{k: str(v) for k, v in form.items()}}
    if "auto_answers" not in form and form:  # an unchecked checkbox is absent from a submitted form
        values["auto_answers"] = ""
    state = FormState(values)
    try:
        web = WEB_METHODS.get(values["method"])
        if web is None:
            raise InputError(f"unknown method {values['method']!r}: use one of {', '.join(WEB_METHODS)}", field="method")
        prompts = family_pairs(values, model) if values["source"] == "family" else [_pair_from_clean(values)]
        data: dict[str, Any] = {"model": values["model"], "method": web.name, "prompts": prompts, "metric": values["metric"]}
        if values["source"] == "family" and values["family"] == "custom" and values["prompt_set"]:
            data["prompt_set"] = values["prompt_set"]
        data.update({name: FIELDS[name].parse(values) for name in web.fields if FIELDS[name].into_spec})
        state.spec = parse_spec(data)
    except (InputError, ValidationError) as exc:
        first = field_errors(exc)[0]
        state.error_detail = exc.detail if isinstance(exc, InputError) else {}
        if isinstance(exc, InputError):
            state.error, state.error_field = first["message"], first["field"] or "spec"
        else:
            state.error = f"{first['field'] or 'spec'}: {first['message']}"
            state.error_field = form_field_of(first["field"], values["source"])
    return state


def form_from_spec(spec: Any) -> dict[str, str]:
    """The form values that show a stored spec (single pair -> 'pair' source, else custom list)."""
    values = dict(DEFAULT_FORM)
    values.update(model=spec.model, method=spec.method, metric=spec.metric)
    for name in WEB_METHODS[spec.method].fields:
        f = FIELDS[name]
        values[name] = f.show(getattr(spec, f.spec_field or name))
    if len(spec.prompts) == 1:
        p = spec.prompts[0]
        values.update(source="pair", clean=p.clean, corrupted=p.corrupted, answer=p.answer, wrong=p.wrong)
        values["corruption"] = "swap" if _try(P.swap_names, p.clean) == p.corrupted else "custom"
        values["auto_answers"] = "on" if P.guess_answers(p.clean) == (p.answer, p.wrong) else ""
    else:
        values.update(
            source="family",
            family="custom",
            pairs_text=pairs_text(spec.prompts),
            prompt_set=spec.prompt_set or "",
        )
    return values


def pairs_text(prompts: Any) -> str:
    """Pairs as the pairs box shows them, one per line."""
    return "\n".join(f"{p.clean} | {p.corrupted} | {p.answer} | {p.wrong}" for p in prompts)


def _try(fn, *args):
    try:
        return fn(*args)
    except ValueError:
        return None
