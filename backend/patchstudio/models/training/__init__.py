"""Training the built-in models, offline on CPU: ``patchstudio train-default [--model NAME|all]``.

- ``recipes.py``: the architecture, the hyperparameters and one ``BuiltinRecipe`` per model.
- ``loop.py``: the tokenizer, the training loop, ``train`` / ``train_builtin`` / ``train_all``.
- ``objective.py``: the losses and the learning-rate schedule; ``heads.py``: head dropout and
  training only some heads.
- ``evaluate.py``: the held-out measurements and ``write_report`` (metrics.json, CARD.md).
- ``cards.py``: the model card, rendered from metrics.json with the template beside each model
  (``models/NAME/CARD.md.j2``).
- ``environment.py``: what a bit-for-bit retrain must match, and whether it did.
"""

from .cards import render as render_card
from .evaluate import evaluate, write_report
from .loop import train, train_all, train_builtin
from .recipes import RECIPES, BuiltinRecipe

__all__ = ["RECIPES", "BuiltinRecipe", "evaluate", "render_card", "train", "train_all", "train_builtin", "write_report"]
