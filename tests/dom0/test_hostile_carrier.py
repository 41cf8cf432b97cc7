"""What the carrier VM sends back is hostile (it is networked, dom0 is not):
dom0's memory, its terminal, its journal and its exit codes must not follow
the carrier's choices. Unit level: the adapter's drain, the text cleaning and
every parser of carrier output, fuzzed."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
import types
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dom0 import carrier
from dom0.carrier import ReplyError
from dom0.log import clean_text, last_line, say_json
from dom0.qubes import RealQubes

MIB = 1024 * 1024


class ServiceVM:
    """A VM whose qrexec service is a real local process."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def run_service(self, service: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, **kwargs)  # noqa: S603


def adapter_with(argv: list[str]) -> RealQubes:
    """Return a RealQubes whose one VM, 'carrier', runs ARGV for any service
    (no qubesadmin needed: only run_service_for_stdio is exercised)."""
    adapter = object.__new__(RealQubes)
    adapter.app = types.SimpleNamespace(domains={"carrier": ServiceVM(argv)})
    return adapter


# Threat: a hostile carrier writes hundreds of MiB to stderr; before the fix
# the drain kept the first 64 KiB and then read the rest into ONE bytes object.
def test_stderr_drain_discards_past_its_bound() -> None:
    adapter = adapter_with(["sh", "-c", f"cat >/dev/null; head -c {64 * MIB} /dev/zero >&2;"
                                        " echo done"])
    tracemalloc.start()
    try:
        answer = adapter.run_service_for_stdio("carrier", "qubes.BackupCarrier+info", b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer == b"done\n"
    assert peak < 4 * MIB, f"dom0 held {peak} bytes of carrier stderr"


# Threat: text meant to forge a second journal line or reorder what a reader
# sees. Every character Python itself treats as a line break, and every bidi
# control, must come out as '?'.
LINE_BREAKS = [chr(code) for code in range(sys.maxunicode + 1)
               if len(f"a{chr(code)}b".splitlines()) > 1]
BIDI_CONTROLS = [chr(code) for code in range(sys.maxunicode + 1)
                 if unicodedata.bidirectional(chr(code)) in
                 {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}
                 or chr(code) in "\u200e\u200f\u061c"]


@pytest.mark.parametrize("char", LINE_BREAKS + BIDI_CONTROLS,
                         ids=lambda char: f"U+{ord(char):04X}")
def test_clean_text_removes_every_line_break_and_bidi_control(char: str) -> None:
    assert clean_text(f"ok{char}forged") == "ok?forged"
    assert clean_text(f"ok{char}forged".encode()) == "ok?forged"


def test_the_separator_lists_are_not_empty() -> None:
    assert {"\u2028", "\u2029", "\x85", "\n", "\r"} <= set(LINE_BREAKS)
    assert {"\u202e", "\u2066", "\u200f"} <= set(BIDI_CONTROLS)


@given(st.binary(max_size=2000) | st.text(max_size=2000))
def test_cleaned_text_is_one_printable_line(data: bytes | str) -> None:
    for shown in (clean_text(data), last_line(data if isinstance(data, bytes)
                                              else data.encode("utf-8", "surrogatepass"))):
        assert len(shown.splitlines()) <= 1
        categories = {unicodedata.category(char) for char in shown}
        assert not {category for category in categories if category[0] == "C"}
        assert not categories & {"Zl", "Zp"}


# --- every parser of carrier output, fuzzed -----------------------------------
# Each must return a value or raise ReplyError (exit 8 through main); never
# anything else (before the fix a line of "[[[[..." raised RecursionError:
# a traceback, exit 1, no history record).
PARSERS = {
    "listing": carrier.parse_listing,
    "info": carrier.parse_info,
    "check": carrier.parse_check,
    "receipt": carrier.parse_receipt,
}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["name", "size", "sha256", "mtime", "ok", "end", "count",
                                       "truncated", "protocol", "free", "reserve",
                                       "available", "quota", "used", "x"]), children,
                      max_size=8),
    max_leaves=20)


def lines_of(values: list[Any]) -> bytes:
    return b"".join(json.dumps(value).encode() + b"\n" for value in values)


@pytest.mark.parametrize("which", sorted(PARSERS))
@pytest.mark.parametrize("data", [
    # Short lines (within MAX_REPLY_LINE), nested deeper than the recursion limit.
    b"[" * 4000 + b"\n",
    b'{"name": ' + b"[" * 3000 + b"\n",
    b'{"end": true, "count": 0, "truncated": false, "x": ' + b'{"a":' * 700 + b"\n",
    b"\x00" * 10 + b"\n",
])
def test_deep_or_binary_replies_are_reply_errors(which: str, data: bytes) -> None:
    with pytest.raises(ReplyError):
        PARSERS[which](data)


@pytest.mark.parametrize("which", sorted(PARSERS))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600) | st.lists(JSON_VALUES, max_size=4).map(lines_of))
def test_parsers_only_ever_raise_reply_error(which: str, data: bytes) -> None:
    try:
        PARSERS[which](data)
    except ReplyError:
        pass


def test_json_output_is_whole_and_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    # Before: --json went through the 1000-character line cleaner: a long
    # listing came out cut, as invalid JSON.
    value = {"backups": [{"name": f"laptop-{n}"} for n in range(500)],
             "error": "a\x1b[2J\x7f\u2028\u202e"}
    say_json(value)
    out = capsys.readouterr().out
    assert json.loads(out) == value
    assert out.endswith("}\n") and out[:-1].isascii() and out[:-1].isprintable()


def test_a_service_that_never_answers_is_killed_at_its_deadline() -> None:
    # `exec`: in dom0 the process is qrexec-client, which holds the only ends
    # of the pipes; killing it ends the call.
    adapter = adapter_with(["sh", "-c", "cat >/dev/null; exec sleep 600"])
    with pytest.raises(subprocess.TimeoutExpired):
        adapter.run_service_for_stdio("carrier", "qubes.BackupCarrier+list", b"\n", timeout=1)
