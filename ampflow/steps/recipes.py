"""``ampflow recipes``: list the built-in recipes (name, description, defaults) as a table or JSON.

    ampflow recipes
    ampflow recipes --json
    PYTHONPATH=examples ampflow recipes --recipe my_recipe:digits   # check a user recipe loads

A user recipe is any ``module:function`` on the Python path that returns a recipe object.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ampflow.config import RunConfig
from ampflow.steps import Paths

HELP = "list the built-in recipes with their descriptions and default settings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME",
        help="also load and show this recipe (a module:function user recipe); repeatable",
    )


def cli(args: argparse.Namespace) -> int:
    result = run(RunConfig(), Paths(), extra=args.recipe)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_table(result["recipes"]))
    return 0


def run(
    config: RunConfig | None = None, paths: Paths | None = None, extra: list[str] | None = None
) -> dict[str, Any]:
    """Build each recipe object (cheap: no torch, no data) to read its description and defaults."""
    from ampflow.recipes import get_recipe, list_recipes

    rows = []
    for info in list_recipes():
        recipe = get_recipe(info.name)
        rows.append(
            {
                "name": info.name,
                "factory": info.factory,
                "builtin": True,
                "description": getattr(recipe, "description", "") or info.description,
                "defaults": dict(recipe.defaults),
            }
        )
    for ref in extra or []:
        recipe = get_recipe(ref)
        rows.append(
            {
                "name": ref,
                "factory": ref,
                "builtin": False,
                "description": getattr(recipe, "description", ""),
                "defaults": dict(recipe.defaults),
            }
        )
    return {"recipes": rows}


def format_table(rows: list[dict[str, Any]]) -> str:
    def fmt_defaults(d: dict[str, Any]) -> str:
        return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()) or "-"

    table = [("RECIPE", "DEFAULTS", "DESCRIPTION")]
    table += [(r["name"], fmt_defaults(r["defaults"]), r["description"]) for r in rows]
    w0 = max(len(t[0]) for t in table)
    w1 = max(len(t[1]) for t in table)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in table)
