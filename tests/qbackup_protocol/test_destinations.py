"""The carrier's destinations as dom0 hears of them: names, the list, and one
outcome line per destination (every field of a hostile line refused)."""

from __future__ import annotations

import json

import pytest

from qbackup_protocol.carrier_service import (
    MAX_DESTINATIONS,
    CarrierExit,
    DestinationList,
    DestinationOutcome,
    check_destination,
    check_destinations,
    overall_exit,
    parse_destination_list,
    parse_outcome,
    parse_outcomes,
)
from qbackup_protocol.wire import BackupRecord, ProtocolError, encode_reply

NAME = "laptop/20261206T100000Z"
RECORD = BackupRecord(NAME, 1234, "a" * 64, 1_700_000_000)


def line(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


@pytest.mark.parametrize("name", ["home", "offsite", "nas-2", "a", "x" * 32, "default"])
def test_a_lowercase_word_is_a_destination(name: str) -> None:
    assert check_destination(name) == name


@pytest.mark.parametrize("name", ["", "Home", "2nas", "-x", "a b", "a/b", "a;b", "x" * 33,
                                  "nas\n", None, 3, ["home"]])
def test_anything_else_is_refused(name: object) -> None:
    with pytest.raises(ProtocolError):
        check_destination(name)


def test_a_list_holds_each_destination_once_within_the_bound() -> None:
    assert check_destinations(["home", "offsite"]) == ("home", "offsite")
    with pytest.raises(ProtocolError, match="twice"):
        check_destinations(["home", "home"])
    with pytest.raises(ProtocolError):
        check_destinations([])
    with pytest.raises(ProtocolError):
        check_destinations([f"d{index}" for index in range(MAX_DESTINATIONS + 1)])


def test_the_destination_list_round_trips_and_refuses_garbage() -> None:
    listed = DestinationList(("home", "offsite"))
    assert parse_destination_list(encode_reply(listed.to_reply())) == listed
    for hostile in ({"destinations": "home"}, {"destinations": ["home"], "x": 1},
                    {"destinations": ["../etc"]}, {"destinations": []}):
        with pytest.raises(ProtocolError):
            parse_destination_list(line(hostile))


def test_outcomes_round_trip() -> None:
    good = DestinationOutcome("home", RECORD, CarrierExit.OK)
    bad = DestinationOutcome("offsite", None, CarrierExit.TEMPORARY, "server unreachable")
    output = encode_reply(good.to_reply()) + encode_reply(bad.to_reply())
    assert parse_outcomes(output, NAME) == (good, bad)


@pytest.mark.parametrize("hostile", [
    {"destination": "home", "receipt": {"name": "other", "size": 1, "sha256": "a" * 64,
                                        "mtime": 1}},
    {"destination": "home", "receipt": {"name": NAME, "size": 1, "sha256": None, "mtime": 1}},
    {"destination": "home", "receipt": {"name": NAME, "size": -1, "sha256": "a" * 64,
                                        "mtime": 1}},
    {"destination": "Home", "failed": {"exit": 75, "reason": "x"}},
    {"destination": "home", "failed": {"exit": 0, "reason": "x"}},
    {"destination": "home", "failed": {"exit": 79, "reason": "x"}},
    {"destination": "home", "failed": {"exit": 42, "reason": "x"}},
    {"destination": "home", "failed": {"exit": 75, "reason": "\x1b[2Jgone"}},
    {"destination": "home", "failed": {"exit": 75, "reason": "x" * 301}},
    {"destination": "home", "failed": {"exit": 75}},
    {"destination": "home", "failed": {"exit": 75, "reason": "x"}, "receipt": {}},
    {"destination": "home"},
])
def test_a_hostile_outcome_line_is_refused(hostile: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        parse_outcome(line(hostile), NAME)


def test_outcome_lines_name_each_destination_once_and_end_with_a_newline() -> None:
    one = encode_reply(DestinationOutcome("home", RECORD, CarrierExit.OK).to_reply())
    with pytest.raises(ProtocolError):
        parse_outcomes(one + one, NAME)
    with pytest.raises(ProtocolError):
        parse_outcomes(one[:-1], NAME)
    with pytest.raises(ProtocolError):
        parse_outcomes(b"", NAME)


def test_the_overall_exit_is_ok_partial_or_the_first_failure() -> None:
    ok = DestinationOutcome("home", RECORD, CarrierExit.OK)
    down = DestinationOutcome("offsite", None, CarrierExit.TEMPORARY, "unreachable")
    refused = DestinationOutcome("nas", None, CarrierExit.REFUSED, "no space")
    assert overall_exit([ok]) == CarrierExit.OK
    assert overall_exit([ok, down]) == CarrierExit.PARTIAL
    assert overall_exit([down, ok]) == CarrierExit.PARTIAL
    assert overall_exit([refused, down]) == CarrierExit.REFUSED
    assert overall_exit([]) == CarrierExit.USAGE
