"""dom0/settings.py's table is the one place a job setting is declared: `Job`,
the options of `qbackup backup` and dom0/qbackup.yaml.example follow it
(dom0/README.md's table: test_docs.py)."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

import pytest

from dom0 import config
from dom0.arguments import build_parser
from dom0.settings import SETTINGS, Range, Setting, check_values, default, describe, facts

EXAMPLE = Path(__file__).resolve().parents[2] / "dom0" / "qbackup.yaml.example"
REQUIRED = {"carrier": "sys-backup", "prefix": "laptop", "passphrase_vm": "vault"}


def test_job_has_a_field_per_setting_in_the_tables_order() -> None:
    assert [item.name for item in fields(config.Job)] == ["name", *SETTINGS]


def test_a_job_left_to_its_defaults_has_the_tables() -> None:
    # Job's own defaults (for jobs made in code) are the table's, as checked.
    checked = check_values(REQUIRED)
    assert checked.problems == []
    assert config.Job(name="daily", **REQUIRED) == config.Job(name="daily", **checked.values)
    assert config.Job(name="daily", **REQUIRED).answer_timeout == default("answer_timeout")


@pytest.mark.parametrize("key", [key for key, setting in SETTINGS.items() if setting.range])
def test_each_range_is_the_one_enforced(key: str) -> None:
    bounds = SETTINGS[key].range
    assert bounds is not None
    for inside in (bounds.low, bounds.high):
        assert check_values({**REQUIRED, key: inside}).problems == [], inside
    for outside in (bounds.low - 1, bounds.high + 1):
        [problem] = check_values({**REQUIRED, key: outside}).problems
        assert problem.key == key and str(bounds) in problem.text, outside


def test_facts_show_required_range_and_default_as_yaml_writes_them() -> None:
    assert facts(Setting("n", lambda *_: None, "m", default=60, range=Range(0, 86400))) \
        == "0 to 86400; default 60"
    assert describe(Setting("n", lambda *_: None, "m", default=False)) == "m (default false)"
    assert describe(Setting("n", lambda *_: None, "m", required=True)) == "m (required)"
    assert describe(Setting("n", lambda *_: None, "m", default=())) == "m"


def backup_options() -> dict[str, argparse.Action]:
    parser = build_parser()
    [commands] = [action for action in parser._actions
                  if isinstance(action, argparse._SubParsersAction)]
    return {action.dest: action for action in commands.choices["backup"]._actions}


def test_each_option_named_in_the_table_is_the_parsers() -> None:
    options = backup_options()
    for key, setting in SETTINGS.items():
        if setting.option is None:
            assert key not in options, key
        elif setting.option.startswith("-"):
            assert options[key].option_strings == setting.option.split("/"), key
        else:
            assert options[key].option_strings == [], key  # the positional VM arguments


def comment_block(text: str, key: str) -> str:
    """Return the comment lines just above KEY's line in the example, joined
    into one line (a wrapped sentence reads as it would unwrapped)."""
    lines = text.splitlines()
    [index] = [number for number, line in enumerate(lines)
               if re.fullmatch(rf"\s*(# )?{key}:.*", line)]
    block: list[str] = []
    for line in reversed(lines[:index]):
        stripped = line.strip()
        if not stripped.startswith("#") or re.fullmatch(r"# ?[a-z_]+:.*", stripped):
            break
        block.insert(0, stripped.lstrip("#").strip())
    return " ".join(block)


@pytest.mark.parametrize("key", list(SETTINGS))
def test_the_example_shows_each_setting_with_the_tables_facts(key: str) -> None:
    block = comment_block(EXAMPLE.read_text(), key)
    known = facts(SETTINGS[key])
    assert block and known in block, (key, block)
    # No other default or range is written beside the setting.
    assert len(re.findall(r"\bdefault\b", block)) == ("default " in known), key
    assert len(re.findall(r"\d[a-z]* to \d", block)) == bool(SETTINGS[key].range), key
