"""How big is what sshd can reach? Counts the login shell's modules.

Starts at `server_shell/main.py` (what the installed launcher imports) and
follows every import of a `server_shell` module (statically, through the
AST), and of every `qbackup_protocol` module (the wire protocol, shared with
the carrier, and the package's `__init__`), so a module added later is
counted too. Of a `qbackup_protocol` module it counts what the shell can
reach: the module's docstring and imports, every top-level definition the
shell's modules name, and, transitively, every top-level definition those
name; the client-side reply parsers are not reachable from the shell.
For each reached file: `lines` = every physical line (docstrings, comments
and blank lines included); `code` = statements (Python's logical lines, as
the AST counts them: a call wrapped over three lines is one, a docstring is
none) -- the measure issue 11's "about 1,390 of code" used (1,385 statements
at that commit). `physical` = lines holding a token other than a comment, a
docstring or blank space, printed for comparison.

Usage: python -m tests.server_shell.shell_size
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "server_shell" / "main.py"
PROTOCOL = REPO / "qbackup_protocol"  # the package
SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
           tokenize.ENDMARKER}


def imported_files(path: Path) -> set[Path]:
    """Given a module of the shell, return the shell and protocol files it imports."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "server_shell" if node.level else (node.module or "")
            module = f"{base}.{node.module}" if node.level and node.module else base
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in ("server_shell", "qbackup_protocol"):
                parts = name.split(".")
                for end in range(1, len(parts) + 1):
                    candidate = REPO.joinpath(*parts[:end])
                    if candidate.with_suffix(".py").is_file():
                        found.add(candidate.with_suffix(".py"))
                    elif (candidate / "__init__.py").is_file():
                        found.add(candidate / "__init__.py")
    return found


def reachable() -> list[Path]:
    """Return every file the shell's entry point reaches, sorted."""
    seen: set[Path] = set()
    todo = [ENTRY, REPO / "server_shell" / "__init__.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(imported_files(path) - seen)
    return sorted(seen)


def docstring_lines(tree: ast.AST) -> set[int]:
    """Given a module's AST, return the line numbers its docstrings cover."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    end = body[0].end_lineno or body[0].lineno
                    lines.update(range(body[0].lineno, end + 1))
    return lines


def names_in(node: ast.AST) -> set[str]:
    """Given an AST node, return every bare name and `module.X` attribute it uses."""
    found = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    found |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("qbackup_protocol"):
            found |= {alias.name for alias in n.names}
    return found


def protocol_lines(module: Path, shell_files: list[Path]) -> set[int]:
    """Given a protocol MODULE and the shell's files, return the MODULE's
    reachable line numbers."""
    tree = ast.parse(module.read_text())
    wanted: set[str] = set()
    for path in shell_files:
        wanted |= names_in(ast.parse(path.read_text()))
    definitions: dict[str, ast.stmt] = {}
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef | ast.ClassDef):
            definitions[statement.name] = statement
        elif isinstance(statement, ast.Assign | ast.AnnAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        definitions[node.id] = statement
    reached: set[str] = set()
    todo = [name for name in wanted if name in definitions]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo.extend(n for n in names_in(definitions[name]) if n in definitions and n not in reached)
    lines: set[int] = set()
    for statement in tree.body:
        keep = isinstance(statement, ast.Import | ast.ImportFrom | ast.Expr)
        keep = keep or any(definitions.get(name) is statement for name in reached)
        if keep:
            decorators = getattr(statement, "decorator_list", [])
            first = min([statement.lineno] + [d.lineno for d in decorators])
            lines.update(range(first, (statement.end_lineno or statement.lineno) + 1))
    return lines


def count(path: Path, only: set[int] | None = None) -> tuple[int, int, int]:
    """Given a Python file (and, optionally, the only line numbers that count),
    return (lines, statements, physical code lines); comments and blank lines
    directly above a counted line count too."""
    text = path.read_text()
    docs = docstring_lines(ast.parse(text))
    all_lines = text.splitlines()
    if only is not None:
        only = set(only)
        for number in sorted(only, reverse=True):  # comments and blanks just above
            above = number - 1
            while above >= 1 and above not in only and (
                all_lines[above - 1].strip().startswith("#") or not all_lines[above - 1].strip()
            ):
                only.add(above)
                above -= 1
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in SKIPPED:
            continue
        for line in range(token.start[0], token.end[0] + 1):
            if line not in docs and (only is None or line in only):
                code.add(line)
    statements = sum(
        1 for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.stmt) and node.lineno not in docs
        and (only is None or node.lineno in only)
    )
    return (len(all_lines) if only is None else len(only)), statements, len(code)


def measure() -> tuple[list[tuple[Path, int, int, int]], int, int, int]:
    """Return ([(file, lines, code, physical)], total lines, total code, total physical)."""
    files = reachable()
    shell = [path for path in files if path.parent != PROTOCOL]
    rows = [(path, *count(path, protocol_lines(path, shell) if path.parent == PROTOCOL else None))
            for path in files]
    return rows, sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows)


def main() -> None:
    rows, lines, code, physical = measure()
    print(f"{'lines':>6} {'code':>6} {'phys.':>6}")
    for path, file_lines, file_code, file_physical in rows:
        print(f"{file_lines:6d} {file_code:6d} {file_physical:6d}  {path.relative_to(REPO)}")
    print(f"{lines:6d} {code:6d} {physical:6d}  total ({len(rows)} modules)")


if __name__ == "__main__":
    main()
