"""One carrier, two servers: put reads stdin once and stages it on each
destination, commit publishes where the put staged, list/check/get/info ask
one (--from), transfer answers per destination; an outcome line each."""

from __future__ import annotations

import hashlib
import json
import os

from qbackup_protocol.carrier_service import (
    CarrierExit,
    parse_destination_list,
    parse_outcomes,
    parse_transfer_stats,
)
from testbed.destinations import TwoDestinations
from tests.carrier_vm.conftest import CARRIER_SETTINGS, Carrier, call_service

MIB = 1024 * 1024


def test_put_commit_stages_and_publishes_on_both_byte_exact(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    data = os.urandom(5 * MIB + 123)
    put = carrier.run("put", "--commit", "both-1", data=data)
    assert put.returncode == CarrierExit.OK, put.stderr
    outcomes = parse_outcomes(put.stdout, "both-1")
    assert [outcome.destination for outcome in outcomes] == ["home", "offsite"]
    digest = hashlib.sha256(data).hexdigest()
    for outcome in outcomes:
        assert outcome.record is not None and outcome.record.sha256 == digest
        stored = two.account(outcome.destination).storage / "both-1"
        assert stored.read_bytes() == data
    for destination in ("home", "offsite"):
        got = carrier.run("get", "--from", destination, "both-1")
        assert got.returncode == 0 and got.stdout == data, got.stderr
        stats = carrier.run("transfer", "both-1")
        lines = [parse_transfer_stats(line + b"\n") for line in stats.stdout.splitlines()]
        assert [line.destination for line in lines] == ["home", "offsite"]


def test_put_then_commit_commits_where_the_put_staged(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    data = os.urandom(3 * MIB)
    put = carrier.run("put", "staged-1", data=data)
    assert put.returncode == 0, put.stderr
    assert not (two.home.storage / "staged-1").exists()
    commit = carrier.run("commit", "staged-1")
    assert commit.returncode == 0, commit.stderr
    assert [o.record for o in parse_outcomes(commit.stdout, "staged-1")] == \
        [o.record for o in parse_outcomes(put.stdout, "staged-1")]
    for account in (two.home, two.offsite):
        assert (account.storage / "staged-1").read_bytes() == data


def test_to_sends_to_the_destinations_named_only(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    put = carrier.run("put", "--to", "offsite", "--commit", "only-1", data=b"x" * 1000)
    assert put.returncode == 0, put.stderr
    assert [o.destination for o in parse_outcomes(put.stdout, "only-1")] == ["offsite"]
    assert (two.offsite.storage / "only-1").exists()
    assert not (two.home.storage / "only-1").exists()
    listing = carrier.run("list", "--from", "home")
    assert listing.returncode == 0 and b"only-1" not in listing.stdout
    listing = carrier.run("list", "--from=offsite")
    assert listing.returncode == 0 and b"only-1" in listing.stdout


def test_an_unknown_destination_is_a_usage_error_before_any_contact(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    for argv in (["put", "--to", "home,nas", "x-1"], ["list", "--from", "nas"]):
        result = carrier.run(*argv, data=b"data")
        assert result.returncode == CarrierExit.USAGE, result.stderr
        assert b"no destination 'nas'" in result.stderr
        assert result.stdout == b""
    assert not list(two.home.storage.glob(".x-1*"))


def test_the_service_names_the_destinations_and_asks_the_one_on_the_second_line(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    listed = call_service(carrier, "destinations")
    assert listed.returncode == 0, listed.stderr
    assert parse_destination_list(listed.stdout).names == ("home", "offsite")
    put = carrier.run("put", "--to", "offsite", "--commit", "svc-1", data=b"y" * 100)
    assert put.returncode == 0, put.stderr
    check = call_service(carrier, "check", b"svc-1\noffsite\n")
    assert check.returncode == 0 and json.loads(check.stdout)["ok"] is True, check.stderr
    check = call_service(carrier, "check", b"svc-1\n")  # the first: home, which lacks it
    assert check.returncode == CarrierExit.NO_SUCH_BACKUP, check.stderr
    info = call_service(carrier, "info", b"\noffsite\n")
    assert info.returncode == 0 and b"protocol" in info.stdout, info.stderr


def test_a_commit_that_fails_on_one_destination_is_partial(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    data = os.urandom(2 * MIB)
    put = carrier.run("put", "half-1", data=data)
    assert put.returncode == 0, put.stderr
    two.write_config({"offsite": {"resume_window": 2}}, **CARRIER_SETTINGS)
    two.proxy.down()
    commit = carrier.run("commit", "half-1")
    assert commit.returncode == CarrierExit.PARTIAL, commit.stderr
    home, offsite = parse_outcomes(commit.stdout, "half-1")
    assert (home.destination, home.exit) == ("home", CarrierExit.OK)
    assert (offsite.destination, offsite.exit) == ("offsite", CarrierExit.TEMPORARY)
    assert commit.stderr.startswith(b"qbackup-carrier: offsite: ")
    assert (two.home.storage / "half-1").read_bytes() == data
    assert not (two.offsite.storage / "half-1").exists()


def test_the_destinations_verb_lists_carrier_yamls_in_order(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, _ = two_destinations
    listed = carrier.run("destinations")
    assert listed.returncode == 0, listed.stderr
    assert parse_destination_list(listed.stdout).names == ("home", "offsite")


def test_a_carrier_yaml_with_host_only_has_the_destination_default(carrier: Carrier) -> None:
    single = carrier.run("destinations")
    assert single.returncode == 0, single.stderr
    assert parse_destination_list(single.stdout).names == ("default",)
