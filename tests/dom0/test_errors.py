"""dom0's errors (dom0/errors.py): every exit code is some error's, and the
carrier's statuses are read only through CarrierExit."""

from __future__ import annotations

import ast
from pathlib import Path

from dom0 import errors
from qbackup_protocol.carrier_service import CarrierExit

DOM0 = Path(errors.__file__).resolve().parent


def test_every_exit_code_is_reachable_from_an_error_class() -> None:
    # Each documented failure code is some error's code (or a signal's).
    codes = {cls.exit_code for cls in _subclasses(errors.QbackupError)
             if isinstance(cls.__dict__.get("exit_code"), int)}
    assert set(errors.QbackupExit) - codes == {errors.QbackupExit.OK, errors.QbackupExit.SIGINT,
                                              errors.QbackupExit.SIGTERM}


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found | {cls}


def test_dom0_spells_no_carrier_exit_status() -> None:
    # The carrier's statuses come from carrier_service.CarrierExit only; the
    # one number dom0 shares with it, 75, is dom0's own QbackupExit.TEMPFAIL.
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
            if isinstance(node, ast.Constant) and type(node.value) is int:
                assert node.value not in statuses or _is_tempfail(module, node), \
                    (module.name, node.lineno, node.value)


def _is_tempfail(module: Path, node: ast.Constant) -> bool:
    line = module.read_text().splitlines()[node.lineno - 1]
    return module.name == "errors.py" and line.startswith("    TEMPFAIL = 75, ")
