"""The explore form -> an experiment spec, with the derived fields the page shows back.

A user types one clean prompt (the corruption can be generated: swap the two names, or "ABC":
other random names; the answers are guessed when the prompt has the IOI shape), or picks a prompt
family: the built-in IOI and induction families, or their own pairs, one per line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import ValidationError

from patchstudio.engine.inputs import InputError
from patchstudio.models import prompts as P
from patchstudio.specs import parse_spec

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
    "method": "activation_patching",
    "component": "head",
    "positions": "all",
    "direction": "denoise",
    "ablation": "mean",
    "seed": "0",
    "steps": "1",
    "receivers": "",
    "targets": "L2H2",
    "compensator": "",
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
    corruption_label: str = ""


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


def format_receivers(receivers) -> str:
    return " ".join(f"L{r.layer}H{r.head}.{r.input}" for r in receivers)


def family_pairs(values: dict[str, str]) -> list[dict[str, str]]:
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
    pairs = [p.to_dict() for p in P.FAMILIES[name].make(n, seed=seed, **options)]
    values["pairs_text"] = "\n".join(" | ".join(p[k] for k in ("clean", "corrupted", "answer", "wrong")) for p in pairs)
    return pairs


def spec_from_form(form: Mapping[str, Any]) -> FormState:
    values = {**DEFAULT_FORM, **{k: str(v) for k, v in form.items()}}
    if "auto_answers" not in form and form:  # an unchecked checkbox is absent from a submitted form
        values["auto_answers"] = ""
    state = FormState(values)
    try:
        if values["source"] == "family":
            prompts = family_pairs(values)
            state.corruption_label = P.FAMILIES[values["family"]].description if values["family"] in P.FAMILIES else "your pairs"
        else:
            prompts = [_pair_from_clean(values)]
            state.corruption_label = {"swap": "name swap", "abc": "ABC (other random names)"}.get(values["corruption"], "custom")
        data: dict[str, Any] = {
            "model": values["model"],
            "method": values["method"],
            "prompts": prompts,
            "component": values["component"],
            "positions": values["positions"],
            "metric": values["metric"],
        }
        if values["method"] == "ablation":
            data["ablation"] = values["ablation"]
            data["seed"] = _int(values, "seed", 0, 10**9)
        else:
            data["direction"] = values["direction"]
        if values["method"] in ("attribution_patching", "input_influence"):
            data["steps"] = _int(values, "steps", 1, 64)
        if values["method"] == "input_influence":  # per clean token, at the model's input
            data.pop("direction", None)
            data.update(component="resid_pre", positions="each")
            values.update(component="resid_pre", positions="each")
        if values["method"] in ("path_patching", "self_repair"):  # senders / targets are heads, everywhere
            data.update(component="head", positions="all")
            values.update(component="head", positions="all")
        if values["method"] == "path_patching":
            data["receivers"] = parse_receivers(values.get("receivers", ""))
        if values["method"] == "self_repair":
            data.pop("direction", None)
            data.update(ablation=values["ablation"], seed=_int(values, "seed", 0, 10**9))
            data["targets"] = parse_heads(values.get("targets", ""), "targets")
            if not data["targets"]:
                raise InputError("give at least one target head, like 'L2H2'", field="targets")
            compensator = parse_heads(values.get("compensator", ""), "compensator")
            if len(compensator) > 1:
                raise InputError("give one compensator head, like 'L3H1' (or none)", field="compensator")
            data["compensator"] = compensator[0] if compensator else None
        state.spec = parse_spec(data)
    except InputError as exc:
        state.error, state.error_field, state.error_detail = str(exc), exc.field, exc.detail
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p not in ("activation_patching", "ablation"))
        state.error, state.error_field = f"{where}: {first['msg']}", where.split(".")[0]
    return state


def form_from_spec(spec: Any) -> dict[str, str]:
    """The form values that show a stored spec (single pair -> 'pair' source, else custom list)."""
    values = dict(DEFAULT_FORM)
    values.update(model=spec.model, method=spec.method, component=spec.component, positions=spec.positions, metric=spec.metric)
    if spec.method == "ablation":
        values.update(ablation=spec.ablation, seed=str(spec.seed))
    elif hasattr(spec, "direction"):
        values["direction"] = spec.direction
    if spec.method in ("attribution_patching", "input_influence"):
        values["steps"] = str(spec.steps)
    if spec.method == "path_patching":
        values["receivers"] = format_receivers(spec.receivers)
    if spec.method == "self_repair":
        values.update(ablation=spec.ablation, seed=str(spec.seed))
        values["targets"] = " ".join(f"L{t.layer}H{t.head}" for t in spec.targets)
        values["compensator"] = f"L{spec.compensator.layer}H{spec.compensator.head}" if spec.compensator else ""
    if len(spec.prompts) == 1:
        p = spec.prompts[0]
        values.update(source="pair", clean=p.clean, corrupted=p.corrupted, answer=p.answer, wrong=p.wrong)
        values["corruption"] = "swap" if _try(P.swap_names, p.clean) == p.corrupted else "custom"
        values["auto_answers"] = "on" if P.guess_answers(p.clean) == (p.answer, p.wrong) else ""
    else:
        values.update(
            source="family",
            family="custom",
            pairs_text="\n".join(f"{p.clean} | {p.corrupted} | {p.answer} | {p.wrong}" for p in spec.prompts),
        )
    return values


def _try(fn, *args):
    try:
        return fn(*args)
    except ValueError:
        return None
