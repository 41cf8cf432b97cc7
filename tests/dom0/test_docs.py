"""dom0/README.md's tables say what the code does: each table lives in the
code (errors.EXIT_CODES, settings.SETTINGS, errors.CARRIER_STATUS_ERRORS) and
is shown, not restated, in the README; this test holds them together."""

from __future__ import annotations

import ast
from pathlib import Path

from dom0 import errors
from dom0.settings import SETTINGS, describe
from qbackup_protocol.carrier_service import CarrierExit

README = Path(__file__).resolve().parents[2] / "dom0" / "README.md"


def table_under(heading: str) -> list[list[str]]:
    """Return the rows (cells stripped) of the first table after HEADING."""
    lines = README.read_text().splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and its rule


def test_exit_code_table_is_the_code() -> None:
    assert table_under("## Exit codes") == [
        [str(code), meaning] for code, meaning in errors.EXIT_CODES.items()]


def test_job_settings_table_is_the_code() -> None:
    assert table_under("### Job settings") == [
        [f"`{key}`", describe(setting),
         f"`{setting.option}`" if setting.option and setting.option.startswith("-")
         else setting.option or "-"]
        for key, setting in SETTINGS.items()]


def test_carrier_status_table_is_the_code() -> None:
    assert table_under("### How dom0 reads the carrier's exit status") == [
        [str(int(status)), str(error.exit_code), message]
        for status, (error, message) in errors.CARRIER_STATUS_ERRORS.items()]


def test_every_exit_code_is_reachable_from_an_error_class() -> None:
    # Each documented failure code is some error's code (or a signal's).
    codes = {cls.exit_code for cls in _subclasses(errors.QbackupError)
             if isinstance(cls.__dict__.get("exit_code"), int)}
    assert set(errors.EXIT_CODES) - codes == {errors.EXIT_OK, errors.EXIT_SIGINT,
                                              errors.EXIT_SIGTERM}


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found | {cls}


DOM0 = README.parent


def test_dom0_never_imports_carrier_or_shell_code() -> None:
    for module in sorted(DOM0.glob("*.py")):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("carrier_vm", "server_shell")), (module, name)


def test_dom0_spells_no_carrier_exit_status() -> None:
    # The carrier's statuses come from carrier_service.CarrierExit only; the
    # one number dom0 shares with it, 75, is dom0's own EXIT_TEMPFAIL.
    statuses = {int(status) for status in CarrierExit if status != CarrierExit.OK}
    for module in sorted(DOM0.glob("*.py")):
        tree = ast.parse(module.read_text())
        # Sizes like 64 * 1024 and named limits (MAX_HOOK_WORDS = 64) are not statuses.
        factors = {id(operand) for node in ast.walk(tree)
                   if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Pow)
                   for operand in (node.left, node.right)}
        factors |= {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and all(isinstance(target, ast.Name) and target.id.startswith("MAX_")
                            for target in node.targets)}
        for node in ast.walk(tree):
            if id(node) in factors:
                continue
            if isinstance(node, ast.Assign) and any(
                    isinstance(target, ast.Name) and target.id == "EXIT_TEMPFAIL"
                    for target in node.targets):
                continue
            if isinstance(node, ast.Constant) and type(node.value) is int:
                assert node.value not in statuses or _is_tempfail(module, node), \
                    (module.name, node.lineno, node.value)


def _is_tempfail(module: Path, node: ast.Constant) -> bool:
    line = module.read_text().splitlines()[node.lineno - 1]
    return module.name == "errors.py" and line.startswith("EXIT_TEMPFAIL = 75")
