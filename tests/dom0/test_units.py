"""Pure parts of dom0's qbackup: names, hostile replies, text cleaning, config, estimate,
tamper comparison, profile files. No server needed."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dom0 import carrier as replies
from dom0 import config, settings
from dom0.backup import make_name, parse_estimate
from dom0.carrier import Listing, Record, is_valid_name
from dom0.errors import ConfigError, PassphraseError
from dom0.history import Run, compare_with_server
from dom0.log import clean_text, show_time
from dom0.passphrase import read_passphrase
from dom0.profile import ProfileSpec, destination_path, written_profile
from testbed.qubes_sim.simulator import human

DIGEST = "a" * 64


@pytest.mark.parametrize("prefix", ["laptop", "a", "laptop/daily", "x.y_z-1", "A" * 64,
                                    "a/b/c/d/e/f/g"])
def test_prefix_accepts(prefix: str) -> None:
    assert settings.prefix_problem(prefix) is None
    assert is_valid_name(make_name(prefix))


@pytest.mark.parametrize("prefix", ["", ".x", "-x", "_x", "a b", "a\n", "a$", "a/", "/a",
                                    "a//b", "a/../b", "A" * 65, "ä", "a\tb", "a'b", "a\"b",
                                    "a/b/c/d/e/f/g/h"])
def test_prefix_refuses(prefix: str) -> None:
    assert settings.prefix_problem(prefix) is not None


def test_name_is_prefix_dash_utc_timestamp_and_sortable() -> None:
    moment = datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC)
    assert make_name("laptop", moment) == "laptop-20261122T235959Z"
    assert destination_path("laptop-20261122T235959Z") == \
        "qbackup-carrier put laptop-20261122T235959Z"


@pytest.mark.parametrize(("text", "expected"), [
    (b"plain", "plain"),
    (b"\x1b[31mred\x1b[0m", "?[31mred?[0m"),
    (b"a\r\nforged line", "a??forged line"),
    (b"\xff\xfe", "??"),
    ("bidi\u202eevil", "bidi?evil"),
    (b"nul\x00", "nul?"),
])
def test_clean_text_removes_controls_and_invalid_utf8(text: bytes | str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_text_bounds_length() -> None:
    assert len(clean_text(b"x" * 10_000_000, 100)) == 103


def record(name: str = "a-20261122T235959Z", size: int = 5, sha: object = DIGEST,
           mtime: object = 1) -> bytes:
    return json.dumps({"name": name, "size": size, "sha256": sha, "mtime": mtime}).encode()


END = b'{"end": true, "count": %d, "truncated": false}'


def test_listing_parses_records_and_summary() -> None:
    listing = replies.parse_listing(record() + b"\n" + END % 1 + b"\n")
    assert listing.records == [Record("a-20261122T235959Z", 5, DIGEST, 1)]


@pytest.mark.parametrize("data", [
    b"",
    END % 0,  # no final newline: truncated
    record() + b"\n",  # no summary
    record() + b"\n" + END % 2 + b"\n",  # count mismatch
    record() + b"\n" + record() + b"\n" + END % 2 + b"\n",  # duplicate name
    record(name="../etc") + b"\n" + END % 1 + b"\n",
    record(name="a\u001b]0;x") + b"\n" + END % 1 + b"\n",
    record(size=-1) + b"\n" + END % 1 + b"\n",
    record(size=True) + b"\n" + END % 1 + b"\n",
    record(size=2**63) + b"\n" + END % 1 + b"\n",
    record(sha="A" * 64) + b"\n" + END % 1 + b"\n",
    record(mtime="1") + b"\n" + END % 1 + b"\n",
    b'{"name": "a", "size": 1, "sha256": null, "mtime": null, "x": 1}\n' + END % 1 + b"\n",
    b"\xff\xfe\n" + END % 0 + b"\n",
    b"[1]\n" + END % 0 + b"\n",
    b'{"a": "' + b"x" * 5000 + b'"}\n' + END % 0 + b"\n",
    b'{"end": 1, "count": 0, "truncated": false}\n',
])
def test_listing_refuses_malformed(data: bytes) -> None:
    with pytest.raises(replies.ReplyError):
        replies.parse_listing(data)


@pytest.mark.parametrize("data", [
    b'{"protocol":1,"free":1,"reserve":0,"available":1,"quota":null,"used":null}',  # no \n
    b'{"protocol":1,"free":1,"reserve":0,"available":1,"quota":null}\n',
    b'{"protocol":1,"free":-1,"reserve":0,"available":1,"quota":null,"used":null}\n',
    b'{"protocol":1,"free":1,"reserve":0,"available":1,"quota":null,"used":null}\n\n',
])
def test_info_refuses_malformed(data: bytes) -> None:
    with pytest.raises(replies.ReplyError):
        replies.parse_info(data)


@pytest.mark.parametrize(("epoch", "shown"), [
    (None, "-"), (0, "1970-01-01 00:00:00Z"), (2**63 - 1, "?"), (-1e30, "?")])
def test_show_time_survives_absurd_mtimes(epoch: float | None, shown: str) -> None:
    assert show_time(epoch) == shown


def test_check_reply_parses() -> None:
    value = json.loads(record())
    value["ok"] = False
    result = replies.parse_check(json.dumps(value).encode() + b"\n")
    assert result.record.name == "a-20261122T235959Z" and result.ok is False


def find_tampering(runs: list[Run], listing: Listing, prefix: str = "") -> list[str]:
    return compare_with_server(runs, listing.records, not listing.truncated, prefix).problems


def run(name: str, size: int, sha: str = DIGEST) -> Run:
    return Run("job", "c", name, size, sha, 0.0, 1.0, "ok")


@pytest.mark.parametrize(("stored", "problem"), [
    ([], "vanished"),
    ([Record("a-1", 4, DIGEST, 1)], "shrank"),
    ([Record("a-1", 6, DIGEST, 1)], "size changed"),
    ([Record("a-1", 5, "b" * 64, 1)], "digest changed"),
    ([Record("a-1", 5, None, 1)], "digest changed"),
])
def test_tampering_is_found(stored: list[Record], problem: str) -> None:
    [found] = find_tampering([run("a-1", 5)], Listing(stored, False))
    assert problem in found


def test_tampering_ignores_other_prefixes_and_failed_runs() -> None:
    runs = [run("b-1", 5), Run("job", "c", None, None, None, 0, 1, "failed: X")]
    assert find_tampering(runs, Listing([], False), "a") == []
    stored = [Record("a-1", 5, DIGEST, 1)]
    assert find_tampering([run("a-1", 5)], Listing(stored, False), "a") == []


@pytest.mark.parametrize(("summary", "expected"), [
    (human(3 * 1024 * 1024), int(3.05 * 1024 * 1024)),  # rounding slack
    (human(1536), int(1.55 * 1024)),
    (human(500), 500),
    (human(5 * 1024**3), int(5.05 * 1024**3)),
])
def test_estimate_reads_the_total_of_qubes_summary(summary: str, expected: int) -> None:
    text = f"   work |  VM | 1 GiB |\n      Total size: | {summary}\n".encode()
    assert parse_estimate(text) == expected


def test_estimate_is_none_without_a_total() -> None:
    assert parse_estimate(b"nothing here") is None


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qbackup.yaml"
    path.write_text(text)
    return path


def test_config_loads_a_job_with_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "jobs:\n  daily:\n    carrier: sys-backup\n"
                                  "    prefix: laptop\n    passphrase_vm: vault\n")
    job = config.file_job(config.read_config(path), "daily")
    assert job == config.Job(name="daily", carrier="sys-backup", prefix="laptop",
                             passphrase_vm="vault")


def test_config_collects_every_problem_with_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
jobs:
  daily:
    carrier: "bad vm"
    prefix: "../x"
    vms: work
    retries: -1
    colour: blue
    verify: "yes"
""")
    with pytest.raises(ConfigError) as caught:
        config.file_job(config.read_config(path), "daily")
    lines = {"carrier": 4, "prefix": 5, "vms": 6, "retries": 7, "colour": 8, "verify": 9}
    problems = caught.value.problems
    for key, line in lines.items():
        assert any(problem.startswith(f"{path}:{line}: jobs.daily.{key}: ")
                   for problem in problems), key
    assert f"{path}:3: jobs.daily: give exactly one of passphrase_file and passphrase_vm" \
        in problems
    assert len(problems) == 7


@pytest.mark.parametrize(("text", "problem"), [
    ("jobs: [1]\n", "expected a mapping with a 'jobs' mapping"),
    ("jobs: {}\nextra: 1\n", ":2: extra: unknown key"),
    ("{{{", "qbackup.yaml:1:4: YAML syntax error: expected the node content"),
])
def test_config_refuses_bad_files(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config.read_config(write_config(tmp_path, text))


def test_unknown_job_names_the_known_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path, "jobs:\n  daily:\n    carrier: c\n    prefix: p\n"
                                  "    passphrase_vm: v\n")
    with pytest.raises(ConfigError, match="no job named 'weekly' \\(jobs: daily\\)"):
        config.file_job(config.read_config(path), "weekly")


def test_passphrase_first_line_without_line_end(tmp_path: Path) -> None:
    path = tmp_path / "p"
    path.write_text("secret words\r\nsecond line\n")
    path.chmod(0o600)
    assert read_passphrase(path) == "secret words"


def test_passphrase_fifo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(PassphraseError, match="not a regular file"):
        read_passphrase(path)


def test_profile_is_0600_from_the_start_and_deleted_even_on_error(tmp_path: Path) -> None:
    spec = ProfileSpec(carrier="sys-backup", name="a-20261122T235959Z", vms=None, exclude=[],
                       compression=True, passphrase_text="secret")
    old_umask = os.umask(0)
    try:
        with pytest.raises(RuntimeError), written_profile(tmp_path, spec) as profile:
            path = tmp_path / f"{profile}.conf"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert "passphrase_text: secret" in path.read_text()
            assert "destination_path: qbackup-carrier put a-20261122T235959Z" in path.read_text()
            raise RuntimeError("Execute failed")
    finally:
        os.umask(old_umask)
    assert list(tmp_path.iterdir()) == []
