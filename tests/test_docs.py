"""The user documentation stays true to the code: README.md and docs/*.md link only to files that exist, and every
command in their ```bash blocks parses with the parser of the script it runs.

Parsing only: ArgumentParser.parse_args is wrapped so that it parses and then stops the script with `_Parsed`, so
nothing after the parse (loading weights, resolving yamls, training) runs. What the scripts check after parsing (for
example prune.py's --batch-size range) is therefore not exercised here; argparse's own checks (unknown flags, missing
required ones, types, choices) are. Nothing is skipped: a command this file cannot handle fails the test.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)(```|~~~)(.*)$")
NOT_OURS = {"pip", "venv", "pytest"}  # `python -m` modules that are not this repository's scripts
SHELL_WORDS = {"cd", "pip", "pip3", ".", "source", "export", "git", "ls", "cat", "mkdir", "cp", "mv", "unzip"}
OPERATORS = {"&&", "||", ";", "|"}


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(info string, first line number, lines) of every fenced code block."""
    out, lines, i = [], read(path), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(m.group(2)):
                body.append(lines[i])
                i += 1
            out.append((m.group(3).strip(), start + 1, body))
        i += 1
    return out


def prose(path: Path) -> str:
    """The file without its fenced code blocks (links inside code are not links)."""
    keep, inside, fence = [], False, ""
    for line in read(path):
        m = FENCE.match(line)
        if m and (not inside or line.strip().startswith(fence)):
            inside, fence = not inside, m.group(2)
            continue
        if not inside:
            keep.append(line)
    return "\n".join(keep)


# ---------------------------------------------------------------------------------------------------------- links
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)


def links(path: Path) -> list[str]:
    text = prose(path)
    return LINK.findall(text) + REF_DEF.findall(text)


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"README.md", "slimming.md", "methods.md", "deployment.md", "results.md", "findings.md"} <= names
    assert (ROOT / "LICENSE").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc: Path):
    found = links(doc)
    missing = []
    for target in found:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):  # http:, mailto:, anchors
            continue
        rel = target.split("#", 1)[0].split("?", 1)[0]
        if not (doc.parent / rel).exists():
            missing.append(target)
    assert not missing, f"{doc.name}: links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_team_only_paths(doc: Path):
    """Users have no ../shared checkout: the user docs never point into it."""
    assert "../shared" not in doc.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------------- commands
@dataclass
class Command:
    doc: str
    line: int
    text: str  # as joined from the block
    target: Path  # the script or module file it runs
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def logical_lines(body: list[str], first: int) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each with the number of its first physical line."""
    out, buf, start = [], "", first
    for n, line in enumerate(body, first):
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def segments(text: str) -> list[list[str]]:
    """Shell words of each simple command on a line: comments stripped, split at && || ; |."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    out, cur = [], []
    for tok in lex:
        if tok in OPERATORS:
            out.append(cur)
            cur = []
        elif tok and set(tok) <= set("();<>|&"):
            raise ValueError(f"shell syntax {tok!r} is not supported in documented commands (placeholder or redirect?)")
        else:
            cur.append(tok)
    out.append(cur)
    return [c for c in out if c]


def resolve(words: list[str]) -> tuple[Path, list[str]] | None:
    """(file, argv) of a python or torchrun command that runs one of this repo's scripts; None for other commands.
    ValueError for a python command this test cannot check."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # FOO=1 python ...
        words = words[1:]
    if not words:
        return None
    head, rest = words[0], words[1:]
    if head == "torchrun":
        scripts = [i for i, w in enumerate(rest) if w.endswith(".py")]
        if not scripts:
            raise ValueError("torchrun without a script")
        return ROOT / rest[scripts[0]], rest[scripts[0] + 1:]
    if not re.fullmatch(r"python(3(\.\d+)?)?", head):
        if head in SHELL_WORDS or head.startswith(("./", ".venv/")):
            return None
        raise ValueError(f"unknown command {head!r}: add it to SHELL_WORDS if it is not one of ours")
    if rest and rest[0] == "-m":
        module = rest[1]
        if module.split(".")[0] in NOT_OURS:
            return None
        f = ROOT / (module.replace(".", "/") + ".py")
        if not f.is_file():
            raise ValueError(f"python -m {module}: no such module in this repository")
        return f, rest[2:]
    if not rest or not rest[0].endswith(".py"):
        raise ValueError("a python command that runs no script file")
    return ROOT / rest[0], rest[1:]


def collect() -> tuple[list[Command], list[str]]:
    commands, problems = [], []
    for doc in DOCS:
        name = doc.relative_to(ROOT).as_posix()
        for info, first, body in blocks(doc):
            lang = info.split()[0] if info else ""
            runs_python = any(re.match(r"^\s*(\$\s*)?(python3?|torchrun)\b", line) for line in body)
            if lang != "bash":
                if runs_python:
                    problems.append(f"{name}:{first}: a code block that runs python must be ```bash, not ```{lang}")
                continue
            for n, text in logical_lines(body, first):
                try:
                    for words in segments(text):
                        r = resolve(words)
                        if r is not None:
                            commands.append(Command(name, n, text.strip(), *r))
                except ValueError as e:
                    problems.append(f"{name}:{n}: {e}: {text.strip()}")
        for n, line in enumerate(read(doc), 1):  # indented code blocks are not checked, so none may run python
            if re.match(r"^( {4}|\t)\s*python3? \S+\.py", line) and not _in_fence(doc, n):
                problems.append(f"{name}:{n}: an indented command is not checked; put it in a ```bash block")
    return commands, problems


def _in_fence(doc: Path, n: int) -> bool:
    return any(first <= n < first + len(body) for _, first, body in blocks(doc))


COMMANDS, PROBLEMS = collect()


def test_every_command_block_is_checked():
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert len(COMMANDS) >= 40, f"only {len(COMMANDS)} commands found: is the block parsing broken?"
    docs_with_commands = {c.doc for c in COMMANDS}
    assert {"README.md", "docs/slimming.md", "docs/methods.md", "docs/deployment.md", "docs/results.md"} \
        <= docs_with_commands


class _Parsed(BaseException):  # BaseException: the scripts' @cli wrapper lets it through
    def __init__(self, namespace: argparse.Namespace):
        super().__init__()
        self.namespace = namespace


def load(path: Path):
    """The script as a module (scripts import their siblings by name, benchmarks theirs from benchmarks/)."""
    for d in (ROOT, path.parent):
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))
    rel = path.relative_to(ROOT).with_suffix("")
    name = rel.name if rel.parent.name in ("", "benchmarks") else ".".join(rel.parts)
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve() == path.resolve(), f"import {name} found {module.__file__}, not {path}"
    return module


def parse_only(path: Path, argv: list[str], monkeypatch) -> argparse.Namespace:
    """Run the script's own argument parsing on argv and stop right after it."""
    module = load(path)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    if hasattr(module, "parse_opt"):
        entry, args = module.parse_opt, (argv,)
    elif hasattr(module, "main"):  # parser built inside main(); older scripts read sys.argv
        entry = module.main
        args = (argv,) if inspect.signature(inspect.unwrap(entry)).parameters else ()
    else:
        pytest.fail(f"{path.name} has neither parse_opt nor main")
    try:
        entry(*args)
    except _Parsed as p:
        return p.namespace
    pytest.fail(f"{path.name}: the parser was never called")


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_command_parses(cmd: Command, monkeypatch, capsys):
    assert cmd.target.is_file(), f"{cmd}: {cmd.target.relative_to(ROOT)} does not exist"
    try:
        parse_only(cmd.target, cmd.argv, monkeypatch)
    except SystemExit as e:  # argparse's error(): unknown flag, bad value, missing required argument
        pytest.fail(f"{cmd}\n{capsys.readouterr().err.strip()} (exit {e.code})")
