"""The README's fenced shell blocks and the ``readme-test`` markers that say how to run each one.

``tests/test_readme_blocks.py`` runs every shell block of README.md in order, in one fresh working
directory, with the repository's ``.venv/bin`` first on PATH. A shell block is a fence whose info
string is ``bash``, ``sh``, ``shell`` or ``console`` (a ``console`` block runs its ``$ `` lines only;
the other lines are output). Fences without a language (a directory tree, a generated command) are
not shell blocks.

Markers are HTML comments (GitHub does not show them) on the lines just above a block's opening
fence, blank lines allowed between them, one directive each:

    <!-- readme-test: skip (needs a Kubernetes cluster) -->      not run; pytest reports the reason
    <!-- readme-test: env AMPFLOW_TRACKING=off -->                extra environment for this block
    <!-- readme-test: replace "max_steps=200" "max_steps=20" -->  substituted before running (the old
                                                                   text must occur in the block)
    <!-- readme-test: copy examples -->                           a repository path copied into the
                                                                   working directory first
    <!-- readme-test: expect runs/bf16/result.json -->            paths that must exist afterwards

Arguments are split like a shell line (quotes group). A marker that is not above a shell block, an
unknown directive, a ``skip`` without a reason or a ``replace`` whose text the block lacks is an error:
a marker that went stale fails the test instead of silently testing something else.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
DIRECTIVES = ("skip", "env", "replace", "copy", "expect")

_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
_HEADING = re.compile(r"^(#{2,3})\s+(?P<title>.+?)\s*#*\s*$")


class MarkerError(ValueError):
    """A ``readme-test`` marker that cannot be applied (the message names the README line)."""


@dataclass
class Block:
    """One shell block: where it is, what it runs and how the markers above it change that."""

    line: int  # 1-based line of the opening fence
    language: str
    code: str
    section: str
    skip: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    replace: list[tuple[str, str]] = field(default_factory=list)
    copy: list[str] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """A pytest id: the line and the section, e.g. ``L171-the-training-engine``."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")[:40]
        return f"L{self.line}-{slug}"

    def script(self) -> str:
        """The shell text to run: a console block's commands, with every ``replace`` applied."""
        text = console_commands(self.code) if self.language == "console" else self.code
        for old, new in self.replace:
            if old not in text:
                raise MarkerError(f"README.md:{self.line}: replace {old!r}: the block does not contain it")
            text = text.replace(old, new)
        return text


def console_commands(text: str) -> str:
    """The commands of a console transcript: lines after a ``$ `` prompt, and the continuation lines
    of a command ending in a backslash; output lines are dropped."""
    commands, continued = [], False
    for line in text.splitlines():
        if continued or line.startswith("$ "):
            command = line if continued else line[2:]
            commands.append(command)
            continued = command.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def _apply(block: Block, body: str, line: int) -> None:
    name, _, rest = body.partition(" ")
    where = f"README.md:{line}"
    if name == "skip":
        reason = rest.strip()
        if not (reason.startswith("(") and reason.endswith(")") and reason[1:-1].strip()):
            raise MarkerError(f"{where}: write the reason in parentheses: <!-- readme-test: skip (why) -->")
        block.skip = reason[1:-1].strip()
        return
    try:
        args = shlex.split(rest)
    except ValueError as exc:
        raise MarkerError(f"{where}: {name}: {exc}") from exc
    if name == "env":
        for pair in args:
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise MarkerError(f"{where}: env takes KEY=VALUE words, got {pair!r}")
            block.env[key] = value
    elif name == "replace":
        if len(args) != 2:
            raise MarkerError(f'{where}: replace takes two quoted texts: replace "old" "new"')
        block.replace.append((args[0], args[1]))
    elif name in ("copy", "expect"):
        if not args:
            raise MarkerError(f"{where}: {name} needs at least one path")
        getattr(block, name).extend(args)
    else:
        raise MarkerError(f"{where}: unknown readme-test directive {name!r} (known: {', '.join(DIRECTIVES)})")


def parse(text: str) -> list[Block]:
    """Every shell block of a Markdown text, in order, with its markers applied.

    Raises :class:`MarkerError` for a marker that belongs to no shell block or cannot be applied."""
    blocks: list[Block] = []
    pending: list[tuple[int, str]] = []  # markers waiting for their fence: (line, body)
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        fence = _FENCE.match(line)
        marker = _MARKER.match(line)
        heading = _HEADING.match(line)
        if marker:
            pending.append((number, marker.group("body")))
        elif fence:
            close = re.compile(
                rf"^ {{0,3}}{re.escape(fence.group('fence')[0])}{{{len(fence.group('fence'))},}}\s*$"
            )
            body, i = [], i + 1
            while i < len(lines) and not close.match(lines[i]):
                body.append(lines[i])
                i += 1
            language = fence.group("info").lower()
            if language in SHELL_LANGUAGES:
                block = Block(line=number, language=language, code="\n".join(body) + "\n", section=section)
                for marker_line, directive in pending:
                    _apply(block, directive, marker_line)
                blocks.append(block)
            elif pending:
                raise MarkerError(
                    f"README.md:{pending[0][0]}: readme-test marker above a fence that is not a shell "
                    f"block ({language or 'no language'}; shell blocks: {', '.join(SHELL_LANGUAGES)})"
                )
            pending = []
        elif line.strip():
            if pending:
                raise MarkerError(
                    f"README.md:{pending[0][0]}: readme-test marker not followed by a shell block "
                    f"(line {number} comes first)"
                )
            if heading:
                section = heading.group("title").strip("`")
        i += 1
    if pending:
        raise MarkerError(f"README.md:{pending[0][0]}: readme-test marker at the end, above no block")
    return blocks


def readme_blocks(readme: str | Path) -> list[Block]:
    """:func:`parse` of a README file."""
    return parse(Path(readme).read_text(encoding="utf-8"))
