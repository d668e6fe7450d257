"""``ampflow <step> ...``: the one entry point that images, KFP components and Airflow tasks call.

    ampflow recipes
    ampflow prep --recipe tweets-bow --out data/
    ampflow train --recipe tweets-bow --data data/ --out runs/fp32 --precision 32-true --set max_steps=100
    ampflow evaluate --recipe tweets-bow --data data/ --checkpoint runs/fp32 --out runs/fp32/eval
    ampflow bench --recipe tweets-bow --precisions 32-true,bf16-mixed --compile off --out bench/
    torchrun --nproc_per_node=2 -m ampflow train --strategy ddp ...

Exit codes: 0 done, 2 bad input (one line naming the field and the allowed values), 1 failure while
running, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any

from ampflow import __version__
from ampflow.config import ConfigError
from ampflow.steps import STEP_MODULES


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage already; keep its message to one line without the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples keep their line breaks; every option with a real default shows it (once)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: {default})"


def _epilog(module: Any) -> str | None:
    """A step's ``--help`` ending: the example commands of its module docstring (the ones its entry
    module shows, so they cannot drift apart), and the ``--set`` keys where the step takes them all."""
    lines = (module.__doc__ or "").splitlines()
    examples, keep = [], False
    for line in lines:
        command = line.strip().startswith(("ampflow ", "torchrun ", "python -m ampflow", "PYTHONPATH="))
        if line.startswith("    ") and (command or (keep and line.startswith("        "))):
            examples.append(line.rstrip())
            keep = True
        else:
            keep = False
    parts = []
    if getattr(module, "TAKES_ALL_SET_KEYS", False):
        from ampflow.config import set_keys_help

        parts.append(set_keys_help())
    if examples:  # last, where a person looks first
        parts.append("examples:\n" + "\n".join(examples))
    return "\n\n".join(parts) or None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ampflow",
        description="Mixed-precision PyTorch training as pipeline steps: prep, train, evaluate, "
        "bench, compare, register, launch.",
    )
    parser.add_argument("--version", action="version", version=f"ampflow {__version__}")
    sub = parser.add_subparsers(dest="step", metavar="STEP", parser_class=_Parser)
    sub.required = True
    for name, module_name in STEP_MODULES.items():
        # a step that fails to import is a broken installation: say so, never drop the command
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=_epilog(module),
            formatter_class=_HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.cli(args) or 0)
    except ConfigError as exc:
        print(f"ampflow {args.step}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ampflow {args.step}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure while running: keep the traceback for the logs
        if os.environ.get("AMPFLOW_QUIET_ERRORS") != "1":
            traceback.print_exc()
        print(f"ampflow {args.step}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
