"""Model cards: Markdown templates beside the models (``NAME/CARD.md.j2``; hydra's extends the
default's), filled from the model's metrics.json. The prose lives in the templates; this module only
hands them the numbers and a few facts about the training data.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from .. import prompts
from .environment import environment_summary
from .recipes import RECIPES, BuiltinRecipe

TEMPLATES = Path(__file__).resolve().parents[1]  # patchstudio/models: NAME/CARD.md.j2
CARD_TEMPLATE = "CARD.md.j2"


def _head(where: dict | list) -> str:
    """L{layer}H{head} of {"layer": l, "head": h} or [l, h]."""
    layer, head = (where["layer"], where["head"]) if isinstance(where, dict) else where
    return f"L{layer}H{head}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["fmt"] = format  # {{ x|fmt(".3f") }}: Python's format specs, as the numbers always read
    env.filters["head"] = _head
    return env


def render(metrics: dict, recipe: BuiltinRecipe | str) -> str:
    """The card of built-in model ``recipe`` (its template: models/NAME/CARD.md.j2) from its metrics."""
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    training = metrics["training"]
    data = {"templates": prompts.IOI_TEMPLATES, "heldout": prompts.HELDOUT_TEMPLATES, "names": len(prompts.NAMES),
            "places": len(prompts.PLACES), "objects": len(prompts.OBJECTS)}
    return _environment().get_template(f"{recipe.name}/{CARD_TEMPLATE}").render(
        name=recipe.name, c=recipe.model_config(), m=metrics, t=training, e=metrics["eval"], md=metrics["model"],
        data=data, environment=environment_summary(training.get("environment")),
    )
