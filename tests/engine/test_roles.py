"""Per-position sweeps by role: on IOI prompts of both name orders and of two templates of different
lengths, every cell equals a plain-hook reference that patches the role's token, located here by hand
(the answer's token is IO, the wrong answer's S1 and S2, the last END), never by index; picked
positions are exactly those cells; where roles cannot be aligned the spec is refused on its field."""

from __future__ import annotations

import pytest
import torch

import references as R
from patchstudio.engine.run import run
from patchstudio.errors import InputError
from patchstudio.specs import parse_spec

TOL = 1e-4


def ioi(n1: str, n2: str, s: str, io: str, place: str, obj: str, template: int = 0) -> dict[str, str]:
    text = {0: "When {a} and {b} went to the {p} , {s} gave a {o} to",
            4: "Then , {a} and {b} had a lot of fun at the {p} . {s} gave a {o} to"}[template]
    return {"clean": text.format(a=n1, b=n2, s=s, p=place, o=obj), "corrupted": text.format(a=n1, b=n2, s=io, p=place, o=obj),
            "answer": io, "wrong": s}


# both name orders (ABBA: IO first; BABA: S first) of one template: IO is token 2 in half, token 4 in the rest
MIXED = [ioi("Mary", "John", "John", "Mary", "store", "drink"), ioi("John", "Mary", "John", "Mary", "store", "drink"),
         ioi("Alice", "Bob", "Bob", "Alice", "garden", "book"), ioi("Tom", "Anna", "Tom", "Anna", "school", "ring")]
# two templates, 15 and 20 tokens (with BOS), both orders
TWO_TEMPLATES = [MIXED[0], ioi("Anna", "Tom", "Tom", "Anna", "garden", "ring", template=4),
                 MIXED[1], ioi("Bob", "Alice", "Bob", "Alice", "school", "book", template=4)]
KEY_ROLES = ("IO", "S1", "S2", "END")


def located(model, pair: dict[str, str]) -> dict[str, list[int]]:
    """IO, S1, S2 and END found by hand in the clean prompt's tokens."""
    tokens = [model.tokenizer.decode([t]).strip() for t in model.to_tokens(pair["clean"])[0].tolist()]
    io = [i for i, t in enumerate(tokens) if t == pair["answer"]]
    s = [i for i, t in enumerate(tokens) if t == pair["wrong"]]
    assert len(io) == 1 and len(s) == 2
    return {"IO": io, "S1": [s[0]], "S2": [s[1]], "END": [len(tokens) - 1]}


def cells(result, roles=KEY_ROLES) -> torch.Tensor:
    """The result's values at the named roles: [layer, role(, head)]."""
    names = result.labels["pos"]
    values = torch.tensor(result.values)
    return values[:, [names.index(r) for r in roles]]


def patching_reference(model, prompts, component, direction, roles=KEY_ROLES) -> torch.Tensor:
    """Activation patching at each role's hand-located tokens, one full forward pass per cell, averaged over the pairs."""
    pairs = R.pairs_of(model, prompts)
    n_layers = int(model.cfg.n_layers)
    heads = range(int(model.cfg.n_heads)) if component == "head" else [None]
    out = torch.zeros(n_layers, len(roles), len(heads))
    for prompt, pair in zip(prompts, pairs):
        where = located(model, prompt)
        base, source = (pair.corrupted, pair.clean) if direction == "denoise" else (pair.clean, pair.corrupted)
        names = [R.hook_name(component, layer) for layer in range(n_layers)]
        cache = R.cache_of(model, source, names)
        for layer, name in enumerate(names):
            for k, role in enumerate(roles):
                for h, head in enumerate(heads):
                    hook = R.set_at(component, cache[name], base.shape[1], where[role], head)
                    with torch.no_grad():
                        out[layer, k, h] += float(R.score(model, base, pair, "logit_diff", [(name, hook)]))
    out /= len(prompts)
    return out if component == "head" else out[..., 0]


@pytest.mark.parametrize("prompts", [MIXED, TWO_TEMPLATES], ids=["mixed-order", "two-templates"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("component", ["resid_pre", "head"])
def test_activation_patching_by_role_equals_plain_hooks(tiny_model, prompts, direction, component):
    result = run(tiny_model, {"prompts": prompts, "component": component, "positions": "each", "direction": direction})
    assert all(r in result.labels["pos"] for r in KEY_ROLES)
    got, ref = cells(result), patching_reference(tiny_model, prompts, component, direction)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert (ref - ref[0, -1]).abs().max() > 1e-3  # the roles differ: averaging by index would show
    roles = {r.role: r for r in result.roles}
    assert [roles[r].at for r in KEY_ROLES] == [[located(tiny_model, p)[r] for p in prompts] for r in KEY_ROLES]
    assert {r.n for r in result.roles} == {len(prompts)}


def test_mixed_orders_differ_from_averaging_by_index(tiny_model):
    """The bug of issue 20: by index, token 2 averages IO (ABBA) and S1 (BABA); the IO cell is IO in every prompt.
    (Zero ablation on the clean run: patching clean into corrupted cannot tell, as both prompts agree up to S2.)"""
    spec = {"method": "ablation", "ablation": "zero", "prompts": MIXED, "component": "mlp_out"}
    io = cells(run(tiny_model, {**spec, "positions": ["IO"]}), ["IO"])[:, 0]
    assert torch.allclose(io, zero_ablation_reference(tiny_model, MIXED, roles=("IO",))[:, 0], atol=TOL)
    index_mean = torch.zeros(len(io))
    for pair in R.pairs_of(tiny_model, MIXED):
        for layer in range(len(io)):
            name = R.hook_name("mlp_out", layer)
            zero = torch.zeros(1, pair.clean.shape[1], int(tiny_model.cfg.d_model))
            hook = R.set_at("mlp_out", zero, pair.clean.shape[1], 2, None)
            with torch.no_grad():
                index_mean[layer] += float(R.score(tiny_model, pair.clean, pair, "logit_diff", [(name, hook)])) / len(MIXED)
    assert (io - index_mean).abs().max() > 1e-3


def test_picked_positions_are_exactly_those_cells(tiny_model):
    """'S2 and END': two cells, in the prompts' order, equal to the per-role sweep's and the reference."""
    picked = run(tiny_model, {"prompts": MIXED, "component": "head", "positions": ["END", "S2"]})
    assert picked.labels["pos"] == ["S2", "END"] and picked.axes == ["layer", "pos", "head"]
    every = run(tiny_model, {"prompts": MIXED, "component": "head", "positions": "each"})
    assert torch.allclose(torch.tensor(picked.values), cells(every, ("S2", "END")), atol=1e-6)
    ref = patching_reference(tiny_model, MIXED, "head", "denoise", roles=("S2", "END"))
    assert torch.allclose(torch.tensor(picked.values), ref, atol=TOL)


def test_picked_index_where_every_prompt_has_the_same_role(tiny_model):
    """Index 10 is S2 in every prompt of MIXED: picked by index, it is that cell, named by its index."""
    picked = run(tiny_model, {"prompts": MIXED, "component": "resid_pre", "positions": [10, "IO"]})
    assert picked.labels["pos"] == ["IO", "10"]  # IO first: token 2 in prompt 1
    every = run(tiny_model, {"prompts": MIXED, "component": "resid_pre", "positions": "each"})
    assert torch.allclose(torch.tensor(picked.values), cells(every, ("IO", "S2")), atol=1e-6)


def zero_ablation_reference(model, prompts, roles=KEY_ROLES) -> torch.Tensor:
    pairs = R.pairs_of(model, prompts)
    n_layers = int(model.cfg.n_layers)
    out = torch.zeros(n_layers, len(roles))
    for prompt, pair in zip(prompts, pairs):
        where = located(model, prompt)
        for layer in range(n_layers):
            name = R.hook_name("mlp_out", layer)
            for k, role in enumerate(roles):
                zero = torch.zeros(1, pair.clean.shape[1], int(model.cfg.d_model))
                hook = R.set_at("mlp_out", zero, pair.clean.shape[1], where[role], None)
                with torch.no_grad():
                    out[layer, k] += float(R.score(model, pair.clean, pair, "logit_diff", [(name, hook)]))
    return out / len(prompts)


@pytest.mark.parametrize("prompts", [MIXED, TWO_TEMPLATES], ids=["mixed-order", "two-templates"])
def test_zero_ablation_by_role_equals_plain_hooks(tiny_model, prompts):
    result = run(tiny_model, {"method": "ablation", "ablation": "zero", "prompts": prompts, "component": "mlp_out",
                              "positions": "each"})
    got, ref = cells(result), zero_ablation_reference(tiny_model, prompts)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def reference_by_role(model, kind: str, seed: int = 0, draws: int = 1) -> torch.Tensor:
    """Mean or resample ablation of resid_pre on MIXED against the spec's own clean and corrupted prompts
    (the tiny model cannot spell the generator's prompts): role by role, each reference prompt's own token
    of that role (a corrupted prompt's roles sit where its clean prompt's do). Resample: the metric's mean
    over the pair's ``draws`` draws (``references.resample_draws``, from the docstring's rule)."""
    pairs = R.pairs_of(model, MIXED)
    pool = [p.clean for p in pairs] + [p.corrupted for p in pairs]
    pool_where = [located(model, p) for p in MIXED] * 2
    n_layers = int(model.cfg.n_layers)
    out = torch.zeros(n_layers, len(KEY_ROLES))
    for i, (prompt, pair) in enumerate(zip(MIXED, pairs)):
        where = located(model, prompt)
        if kind == "resample":  # never the pair's own clean or corrupted prompt
            own = {j for j in range(len(pool)) if torch.equal(pool[j], pair.clean) or torch.equal(pool[j], pair.corrupted)}
            sources = [[j] for j in R.resample_draws(len(pool), i, seed, draws, own)]
        else:
            sources = [list(range(len(pool)))]
        for layer in range(n_layers):
            name = R.hook_name("resid_pre", layer)
            acts = [R.cache_of(model, t, [name])[name] for t in pool]
            for k, role in enumerate(KEY_ROLES):
                for used in sources:
                    value = torch.stack([acts[j][0, pool_where[j][role]] for j in used]).mean(0)

                    def hook(act, hook, value=value, at=where[role]):
                        act = act.clone()
                        act[0, at] = value
                        return act

                    with torch.no_grad():
                        out[layer, k] += float(R.score(model, pair.clean, pair, "logit_diff", [(name, hook)])) / len(sources)
    return out / len(MIXED)


@pytest.mark.parametrize("kind, draws", [("mean", 8), ("resample", 1), ("resample", 3)])
def test_mean_and_resample_ablation_take_each_role_from_the_same_role(tiny_model, kind, draws):
    result = run(tiny_model, {"method": "ablation", "ablation": kind, "seed": 5, "prompts": MIXED, "component": "resid_pre",
                              "positions": "each", "draws": draws})
    assert result.reference["kind"] == "own"
    got, ref = cells(result), reference_by_role(tiny_model, kind, seed=5, draws=draws)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def attribution_reference(model, prompts, direction, roles=KEY_ROLES) -> torch.Tensor:
    """base metric + d/dt metric(A_base + t (A_src - A_base) at the role's tokens), by autograd, per head."""
    pairs = R.pairs_of(model, prompts)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    out = torch.zeros(n_layers, len(roles), n_heads)
    for prompt, pair in zip(prompts, pairs):
        where = located(model, prompt)
        base, source = (pair.corrupted, pair.clean) if direction == "denoise" else (pair.clean, pair.corrupted)
        names = [R.hook_name("head", layer) for layer in range(n_layers)]
        src, bc = R.cache_of(model, source, names), R.cache_of(model, base, names)
        with torch.no_grad():
            base_metric = float(R.score(model, base, pair, "logit_diff"))
        for layer, name in enumerate(names):
            for k, role in enumerate(roles):
                for h in range(n_heads):
                    t = torch.zeros((), requires_grad=True)

                    def site(act, hook, at=where[role], h=h, name=name, t=t):
                        act = act.clone()
                        act[:, at, h] = act[:, at, h] + t * (src[name][:, at, h] - bc[name][:, at, h])
                        return act

                    (g,) = torch.autograd.grad(R.score(model, base, pair, "logit_diff", [(name, site)]), [t])
                    out[layer, k, h] += base_metric + float(g)
    return out / len(prompts)


@pytest.mark.parametrize("prompts", [MIXED, TWO_TEMPLATES], ids=["mixed-order", "two-templates"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_by_role_equals_autograd(tiny_model, prompts, direction):
    result = run(tiny_model, {"method": "attribution_patching", "prompts": prompts, "component": "head",
                              "positions": list(KEY_ROLES), "direction": direction})
    assert result.labels["pos"] == ["IO", "S1", "S2", "END"] if prompts is MIXED else set(result.labels["pos"]) == set(KEY_ROLES)
    got, ref = cells(result), attribution_reference(tiny_model, prompts, direction)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def test_two_templates_sweep_the_roles_they_share_and_say_which_are_left_off(tiny_model):
    result = run(tiny_model, {"prompts": TWO_TEMPLATES, "component": "resid_pre", "positions": "each"})
    # 'a' is once in template 0 ("gave a") and twice in template 4 ("had a lot", "gave a"): not aligned by count
    assert result.labels["pos"] == ["BOS", "IO", "and", "S1", "the", "PLACE", ",", "S2", "gave", "OBJECT", "END"]
    assert [r.at for r in result.roles if r.role == "END"] == [[[14], [19], [14], [19]]]
    warning = next(w for w in result.warnings if "left off" in w)
    assert "When (in 2 of 4 prompts)" in warning and "Then (in 2 of 4 prompts)" in warning
    assert "a (1 or 2 times in a prompt)" in warning and "Each cell averages all 4 prompts" in warning


# --- refusals name the field ----------------------------------------------------------------------


INDUCTION = {"clean": "Mary John Alice Bob Mary John Alice", "corrupted": "Tom Anna Alice Bob Mary John Alice",
             "answer": "Bob", "wrong": "Tom"}
CUSTOM = {"clean": "the store had a ring", "corrupted": "the school had a ring", "answer": "to", "wrong": "at"}
CUSTOM_TWO = {"clean": "the store had a ring", "corrupted": "the school had the ring", "answer": "to", "wrong": "at"}


@pytest.mark.parametrize(
    "spec, field, words",
    [
        ({"prompts": [MIXED[0], INDUCTION], "positions": "each"}, "positions",
         ["prompt 2 is a repeated sequence while prompt 1 is an IOI prompt", "share no roles but the final position"]),
        ({"prompts": [CUSTOM, CUSTOM_TWO], "positions": "each"}, "positions",
         ["prompt 2 differs from its corruption at 2 position(s) and prompt 1 at 1", "cannot be aligned by role"]),
        ({"prompts": [MIXED[0], INDUCTION], "positions": ["S2"]}, "positions", ["prompt 2 has no position 'S2'", "its roles are"]),
        ({"prompts": MIXED, "positions": [2]}, "positions",
         ["position 2 is IO in prompt 1 but S1 in prompt 2", "pick roles by name (e.g. IO)"]),
        ({"prompts": TWO_TEMPLATES, "positions": [17]}, "positions", ["position 17 is past the end of prompt 1 (15 tokens"]),
        ({"prompts": MIXED, "positions": ["END", 14]}, "positions", ["positions 14 and END are the same position(s)"]),
        ({"prompts": TWO_TEMPLATES, "positions": ["a"]}, "positions", ["'a' is 1 time(s) in prompt 1 but 2 in prompt 2"]),
        ({"method": "ablation", "ablation": "mean", "prompts": MIXED, "positions": ["S2"],
          "reference": {"prompts": ["When Mary and John went to the store , Bob gave a drink to"]}}, "reference",
         ["reference prompt 1", "has no position 'S2'"]),
        ({"method": "ablation", "ablation": "mean", "prompts": MIXED, "component": "pattern", "positions": "each"}, "component",
         ["ablation of the attention pattern by position is not aligned by role"]),
        ({"method": "ablation", "ablation": "mean", "prompts": TWO_TEMPLATES, "positions": "each"}, "prompts",
         ["all prompts must have the same number of tokens", "prompt 2 has 20"]),
    ],
    ids=["kinds", "changed-positions", "missing-role", "index-of-two-roles", "index-past-the-end", "same-position-twice", "word-of-uneven-count",
         "reference-without-the-role", "pattern-by-role", "mean-over-lengths"],
)
def test_positions_that_cannot_be_aligned_are_refused_on_their_field(tiny_model, spec, field, words):
    with pytest.raises(InputError) as info:
        run(tiny_model, {"component": "resid_pre", **spec})
    assert info.value.field == field
    for word in words:
        assert word in str(info.value)


def test_positions_across_kinds_picked_where_every_prompt_has_them(tiny_model):
    """END is in every prompt, IOI or not: picking it sweeps both kinds together."""
    result = run(tiny_model, {"prompts": [MIXED[0], INDUCTION], "component": "resid_pre", "positions": ["END"]})
    assert result.labels["pos"] == ["END"] and [r.at for r in result.roles] == [[[14], [7]]]


def test_custom_pairs_are_named_by_their_changed_positions_and_words(tiny_model):
    """Not IOI, not a repeated sequence: the changed token is diff1, the last END, the rest its word."""
    result = run(tiny_model, {"prompts": [CUSTOM], "component": "resid_pre", "positions": "each"})
    assert result.labels["pos"] == ["BOS", "the", "diff1", "had", "a", "END"]


def test_template_slots_of_custom_pairs_are_aligned_by_index(tiny_model):
    """Custom pairs of one template whose object word differs ('ring', 'book'): a slot no role of the
    sweep holds in any prompt, so its index is one slot, never two roles mixed; no warning about it."""
    pairs = [{"clean": "the store had a ring to", "corrupted": "the school had a ring to", "answer": "to", "wrong": "at"},
             {"clean": "the garden had a book to", "corrupted": "the store had a book to", "answer": "to", "wrong": "at"}]
    result = run(tiny_model, {"prompts": pairs, "component": "resid_pre", "positions": "each"})
    assert result.labels["pos"] == ["BOS", "the", "diff1", "had", "a", "5", "END"]
    assert [r.at for r in result.roles if r.role == "5"] == [[[5], [5]]]
    assert not any("left off" in w for w in result.warnings)
    ref = torch.zeros(int(tiny_model.cfg.n_layers))
    for pair in R.pairs_of(tiny_model, pairs):
        for layer in range(len(ref)):
            name = R.hook_name("resid_pre", layer)
            hook = R.set_at("resid_pre", R.cache_of(tiny_model, pair.clean, [name])[name], pair.clean.shape[1], 5, None)
            with torch.no_grad():
                ref[layer] += float(R.score(tiny_model, pair.corrupted, pair, "logit_diff", [(name, hook)])) / len(pairs)
    assert torch.allclose(cells(result, ["5"])[:, 0], ref, atol=TOL)
    picked = run(tiny_model, {"prompts": pairs, "component": "resid_pre", "positions": [5]})  # by index: the same cell
    assert torch.allclose(torch.tensor(picked.values), cells(result, ["5"]), atol=1e-6)


def test_induction_roles(tiny_model):
    result = run(tiny_model, {"prompts": [INDUCTION], "component": "resid_pre", "positions": "each"})
    # Mary John Alice Bob | Mary John Alice: Alice is A (the final token's earlier copy), Bob is B (the answer's)
    assert result.labels["pos"] == ["BOS", "first1", "first2", "A", "B", "repeat1", "repeat2", "END"]


# --- the spec ---------------------------------------------------------------------------------------


def test_picked_positions_are_kept_sorted_and_once():
    a = parse_spec({"prompts": MIXED[:1], "positions": ["S2", "END", " S2", "10", 3]})
    b = parse_spec({"prompts": MIXED[:1], "positions": [3, 10, "END", "S2"]})
    assert a.positions == (3, 10, "END", "S2") and a.id == b.id


# Ids computed on main before picked positions existed: a spec in the old form keeps its id. (A
# resample ablation's id changed since, on purpose: its value is now the mean over ``draws`` draws.)
OLD_IDS = [
    ({"positions": "each"}, "a5fd78b3246ffb7d"),
    ({"positions": "all", "component": "resid_pre"}, "9f4332a3403c9441"),
    ({"method": "attribution_patching", "positions": "each", "direction": "noise"}, "2fe663012d52b871"),
    ({"method": "input_influence"}, "1b3d3fae9d6292f4"),
]


@pytest.mark.parametrize("spec, expected", OLD_IDS)
def test_specs_in_the_old_form_keep_their_ids(spec, expected):
    from helpers import TINY_PAIRS

    assert parse_spec({"prompts": TINY_PAIRS, **spec}).id == expected


@pytest.mark.parametrize(
    "positions, words",
    [("S2", "positions must be 'all', 'each' or a list"), ([], "pick at least one position"), ([-1], "negative"),
     ([True], "a role name or a token index"), ([" "], "empty")],
)
def test_bad_picks_are_refused_on_positions(positions, words):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        parse_spec({"prompts": MIXED[:1], "positions": positions})
    assert info.value.errors()[0]["loc"][-1] == "positions" and words in str(info.value)


def test_methods_on_whole_heads_refuse_picked_positions():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="positions must be 'all'"):
        parse_spec({"method": "path_patching", "prompts": MIXED[:1], "positions": ["END"]})


# Issue 23: an uploaded set's role column (OBJ) names the object's word, at index 5 in one template and
# 6 in the other; the guessed roles have no name for it, and the two templates' lengths differ.
ROLE_CSV = ("clean,corrupted,answer,wrong,OBJ\n"
            "the store had a ring to,the school had a ring to,to,at,ring\n"
            "the garden store had a book to,the school store had a book to,to,at,book\n")


def test_a_role_column_puts_its_cell_at_its_word_in_each_prompt(tiny_model):
    from patchstudio.prompt_sets import fill_prompts, parse_prompt_set

    stored = parse_prompt_set(ROLE_CSV, "csv")
    spec = fill_prompts({"prompt_set": stored.id, "component": "resid_pre", "positions": "each"}, lambda _: stored)
    result = run(tiny_model, spec)
    assert "OBJ" in result.labels["pos"]
    assert [r.at for r in result.roles if r.role == "OBJ"] == [[[5], [6]]]
    prompts = spec["prompts"]
    ref = torch.zeros(int(tiny_model.cfg.n_layers))
    for pair, at in zip(R.pairs_of(tiny_model, prompts), (5, 6)):
        for layer in range(len(ref)):
            name = R.hook_name("resid_pre", layer)
            hook = R.set_at("resid_pre", R.cache_of(tiny_model, pair.clean, [name])[name], pair.clean.shape[1], at, None)
            with torch.no_grad():
                ref[layer] += float(R.score(tiny_model, pair.corrupted, pair, "logit_diff", [(name, hook)])) / len(prompts)
    assert ref.abs().max() > 1e-3  # the cell is not trivially zero
    assert torch.allclose(cells(result, ["OBJ"])[:, 0], ref, atol=TOL)
    picked = run(tiny_model, {**spec, "positions": ["OBJ"]})
    assert torch.allclose(torch.tensor(picked.values)[:, 0], ref, atol=TOL)
    without = run(tiny_model, {**spec, "prompt_set": None,
                               "prompts": [{k: v for k, v in p.items() if k != "roles"} for p in prompts]})
    assert "OBJ" not in without.labels["pos"]  # the guessed roles alone have no such cell


def test_a_role_column_takes_precedence_over_the_guessed_role_of_its_name(tiny_model):
    """Column S2 names IO's word: S2's cell is there; the guessed S2 token is named by its text."""
    prompts = [{**MIXED[0], "roles": {"S2": "Mary"}}, {**MIXED[2], "roles": {"S2": "Alice"}}]
    result = run(tiny_model, {"prompts": prompts, "component": "resid_pre", "positions": ["S2"]})
    where = [located(tiny_model, p)["IO"] for p in prompts]
    assert [r.at for r in result.roles if r.role == "S2"] == [where]
