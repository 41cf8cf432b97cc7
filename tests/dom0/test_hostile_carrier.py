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
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dom0 import carrier, processes
from dom0.carrier import ReplyError
from dom0.config import Hooks
from dom0.errors import TemporaryFailure
from dom0.log import last_line, say_json
from dom0.monitor import Monitor
from dom0.qubes import RealQubes
from qbackup_protocol import wire
from qbackup_protocol.text import clean_text

MIB = 1024 * 1024


class ServiceVM:
    """A VM whose qrexec service is a real local process."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def run_service(self, service: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, **kwargs)  # noqa: S603

    def is_running(self) -> bool:
        return True  # already running: dom0 neither starts nor shuts it down


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
    "receipt": lambda data: carrier.parse_receipt(data, "name"),
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
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
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
        adapter.run_service_for_stdio("carrier", "qubes.BackupCarrier+list", b"\n", timeout=0.2)


# --- a listing the carrier claims was cut short ---------------------------------
def record_line(name: str) -> bytes:
    return json.dumps({"name": name, "size": 5, "sha256": "a" * 64, "mtime": 1}).encode() + b"\n"


def summary_line(count: int, truncated: bool) -> bytes:
    return json.dumps({"end": True, "count": count, "truncated": truncated}).encode() + b"\n"


def test_a_cut_the_server_never_makes_is_refused() -> None:
    # Before: {"count": 0, "truncated": true} switched the vanished-check off.
    with pytest.raises(ReplyError, match="claims a cut the server never makes"):
        carrier.parse_listing(summary_line(0, True))


class ListingCarrier:
    """Answers qubes.BackupCarrier+list per prefix (the Qubes boundary)."""

    profile_dir = None

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def run_service_for_stdio(self, vm: str, service: str, input_data: bytes = b"",
                              max_output: int = 0, timeout: float | None = None) -> bytes:
        prefix = input_data.decode().rstrip("\n")
        self.asked.append(prefix)
        return self.answers[prefix]


def test_names_missing_from_a_cut_listing_are_looked_up_one_by_one() -> None:
    full = [f"other-{n:06d}" for n in range(wire.MAX_LIST_ENTRIES)]
    cut = b"".join(record_line(name) for name in full) + summary_line(len(full), True)
    kept = "laptop-20261120T000000Z"
    gone = "laptop-20261121T000000Z"
    app = ListingCarrier({"": cut, kept: record_line(kept) + summary_line(1, False),
                          gone: summary_line(0, False)})
    client = carrier.CarrierClient(app, "c")  # type: ignore[arg-type]
    listing = client.listing("")
    records = client.records_of({kept, gone}, listing)
    assert app.asked == ["", kept, gone]  # sorted
    assert {record.name for record in records} - set(full) == {kept}  # `gone` stays missing


# --- a carrier that never answers, through the real adapter -----------------------
@pytest.mark.parametrize("script", [
    "exec sleep 600",  # never answers
    "exec 1>&-; exec sleep 600",  # closes stdout at once, never exits
])
def test_every_carrier_call_meets_its_deadline_in_the_real_adapter(script: str) -> None:
    client = carrier.CarrierClient(adapter_with(["sh", "-c", script]), "carrier",
                                   answer_timeout=0.2)
    for call in (client.info, lambda: client.listing("p"), lambda: client.commit("p-1"),
                 lambda: client.check("p-1")):
        with pytest.raises(TemporaryFailure, match="no answer within 0.2 s"):
            call()


def test_a_passphrase_vm_that_never_answers_meets_a_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dom0 import verify
    from dom0.config import PassphraseSource
    from dom0.errors import PassphraseError

    adapter = object.__new__(RealQubes)
    adapter.app = types.SimpleNamespace(domains={"vault": ServiceVM(
        ["sh", "-c", "cat >/dev/null; exec sleep 600"])})
    monkeypatch.setattr(verify, "PASSPHRASE_TIMEOUT", 0.2)
    with pytest.raises(PassphraseError, match="vault did not answer .* within 0.2 s"):
        verify.passphrase_input(adapter, "sys-backup", PassphraseSource(vm="vault"))


# --- what dom0 keeps of a program's output ----------------------------------------
def peak_of(action: Any) -> tuple[Any, int]:
    """Run ACTION; return (its result, the peak of Python memory meanwhile)."""
    tracemalloc.start()
    try:
        result = action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_a_ping_vm_printing_without_end_does_not_grow_dom0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: 512 MiB from the ping VM grew dom0 by 1 GiB (subprocess.run kept all).
    fake = tmp_path / "qvm-run"
    fake.write_text(f"#!/bin/sh\nhead -c {128 * MIB} /dev/zero\n")
    fake.chmod(0o755)
    monkeypatch.setattr("dom0.monitor.QVM_RUN", str(fake))
    monkeypatch.setattr("dom0.processes.NOTIFY_SEND", "/nonexistent/notify-send")
    watcher = Monitor("nightly", "sys-backup", Hooks(ping_url="https://hc-ping.com/x"))
    _, peak = peak_of(lambda: watcher.started("x"))
    assert peak < 4 * MIB


def test_captured_output_keeps_only_its_end() -> None:
    script = f"head -c {64 * MIB} /dev/zero; echo; echo the last line"
    result, peak = peak_of(lambda: processes.run(["sh", "-c", script], max_capture=4096))
    assert result.returncode == 0 and len(result.stdout) == 4096
    assert result.stdout.endswith(b"\nthe last line\n")
    assert peak < 8 * MIB


def test_a_program_past_its_timeout_is_killed() -> None:
    with pytest.raises(processes.TimeoutExpired):
        processes.run(["sleep", "600"], timeout=0.2)


# --- notification bodies are markup to the desktop -------------------------------
def test_carrier_text_cannot_put_markup_on_the_desktop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "argv"
    fake = tmp_path / "notify-send"
    fake.write_text(f'#!/bin/sh\nfor word in "$@"; do printf "%s\\n" "$word"; done > {log}\n')
    fake.chmod(0o755)
    monkeypatch.setattr("dom0.processes.NOTIFY_SEND", str(fake))
    body = 'list via c: refused: <a href="https://evil">click</a> <img src="x"> & \x1b[2J'
    assert processes.notify("qbackup FAILED", body, critical=True)
    assert log.read_text().splitlines() == [
        "--app-name=qbackup", "--urgency=critical", "qbackup FAILED",
        'list via c: refused: &lt;a href="https://evil"&gt;click&lt;/a&gt; &lt;img src="x"&gt;'
        " &amp; ?[2J"]


@pytest.mark.parametrize("answer", [
    b'{"transfer": {"name": "other-1", "lost": 0, "outages": [], "resent": 0}}\n',
    b'{"transfer": {"name": "p-1", "lost": 0, "outages": [1e99], "resent": 0}}\n',
    b'{"transfer": {"name": "p-1", "lost": -1, "outages": [], "resent": 0}}\n',
    b"[" * 4000 + b"\n",
])
def test_a_bad_transfer_report_is_a_reply_error(answer: bytes) -> None:
    app = ListingCarrier({"p-1": answer})
    with pytest.raises(ReplyError):
        carrier.CarrierClient(app, "c").transfer("p-1")  # type: ignore[arg-type]
