"""The man pages say what the programs do: each shipped page (man/) is what
man/render.py makes of its program's parser or table now, so an option,
verb, setting or exit code added to a program without `make man` fails
here; and groff reads every page without a warning."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from man import render

MAN = Path(render.__file__).resolve().parent
PAGES = {page.__name__: page for page in render.PAGES}


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_shipped_page_is_what_its_program_says(name: str) -> None:
    page = PAGES[name]()
    assert (MAN / page.file_name).read_text() == page.text, "run `make man`"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_groff_reads_the_page_without_a_warning(name: str) -> None:
    page = PAGES[name]()
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page.text,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_every_option_of_qbackup_is_on_its_page() -> None:
    # Equality above proves the page is the render; this proves the render
    # misses no option (a bug in the renderer would otherwise pass both).
    from dom0.arguments import build_parser

    text = PAGES["qbackup_page"]().text
    parser = build_parser()
    commands = render.commands_of(parser)
    for each in (parser, *commands.values()):
        for action in each._actions:
            if action.help == argparse.SUPPRESS:  # hidden on purpose, as in --help
                continue
            for option in action.option_strings:
                assert option.replace("-", "\\-") in text, option
    for name in commands:
        assert f".SH COMMAND: {name.upper()}" in text


def test_escape_keeps_roff_from_reading_text_as_requests() -> None:
    assert render.escape(".TH x\n'y\na-b\\c") == "\\&.TH x\n\\&'y\na\\-b\\ec"
