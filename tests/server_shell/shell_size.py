"""How much code sshd can reach: the modules the login shell loads, in lines of code.

sshd runs one program for a backup account, qbackup-shell, whose launcher
imports `server_shell.main` under `python -I`. Every module of this project
that import loads -- the shell's own and the wire protocol it shares with the
carrier -- holds code a client's bytes may reach, and an auditor has to read
all of it, so each module counts whole, whichever of its functions the shell
calls. Which modules those are is asked of Python itself, not guessed from
the source: a module added later is counted without a change here.

A line of code is a line holding a token other than a comment. Blank lines,
comment-only lines and docstrings do not count, so the comments that name a
threat and the docstrings that state a contract cost nothing; a statement
wrapped over three lines counts three.

Usage: python -m tests.server_shell.shell_size
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("server_shell", "qbackup_protocol")  # this project's code the shell can import
NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}
# What the installed launcher runs, and how: isolated from the environment.
LOAD_SHELL = (
    f"import sys; sys.path.insert(0, {str(REPO)!r}); import server_shell.main\n"
    "for name, module in sorted(sys.modules.items()):\n"
    f"    if name.split('.')[0] in {PACKAGES!r}: print(name, module.__file__)\n"
)


def loaded_modules() -> dict[str, Path]:
    """Return {module name: file} of every module of this project that
    importing the login shell loads, as the launcher imports it."""
    output = subprocess.run([sys.executable, "-I", "-c", LOAD_SHELL], capture_output=True,
                            text=True, check=True, cwd="/").stdout
    modules: dict[str, Path] = {}
    for line in output.splitlines():
        name, path = line.split(" ", 1)
        modules[name] = Path(path)
    return modules


def docstring_lines(tree: ast.AST) -> set[int]:
    """Given a module's AST, return the line numbers its docstrings cover."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.body[0] if node.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            if isinstance(first.value.value, str):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def lines_of_code(text: str) -> int:
    """Given a module's source, return how many of its lines hold code: not
    blank, not a comment alone, not part of a docstring."""
    docstrings = docstring_lines(ast.parse(text))
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in NOT_CODE:
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - docstrings)


def measure() -> dict[str, int]:
    """Return {module name: its lines of code} for every module the login shell loads."""
    return {name: lines_of_code(path.read_text()) for name, path in loaded_modules().items()}


def main() -> None:
    sizes = measure()
    for name, size in sizes.items():
        print(f"{size:6d}  {name}")
    print(f"{sum(sizes.values()):6d}  lines of code in {len(sizes)} modules")


if __name__ == "__main__":
    main()
