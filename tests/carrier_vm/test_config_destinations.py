"""carrier.yaml with several destinations (pure: nothing is contacted): the
`host:` form is the one destination `default`, `destinations:` names each
server with its own keys over the top-level ones, every refusal says where;
--to and --from choose among them, and the qrexec service's second stdin
line names one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carrier_vm.arguments import Printout, parse_arguments
from carrier_vm.config import SETTINGS, load_destinations
from carrier_vm.errors import ConfigError, UsageError
from carrier_vm.qrexec import Request, service_request
from qbackup_protocol.carrier_service import MAX_DESTINATIONS

TWO = """\
connect_timeout: 5
rate_limit: 1M
resume_buffer: 4194304
destinations:
  home:
    host: nas
  offsite: {host: backup.example.org, port: 2222, rate_limit: 5M, resume_window: 1h}
"""


def loaded(tmp_path: Path, text: str, **environ: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "carrier.yaml"
    path.write_text(text)
    return load_destinations({"QBACKUP_CARRIER_CONFIG": str(path), **environ})


def refusal(tmp_path: Path, text: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as refused:
        loaded(tmp_path, text, **environ)
    return str(refused.value).replace(str(tmp_path / "carrier.yaml"), "C")


def test_the_single_form_is_one_destination_named_default(tmp_path: Path) -> None:
    found = loaded(tmp_path, "host: server\nrate_limit: 2K\n")
    assert found.names == ("default",)
    assert (found.configs[0].host, found.configs[0].rate_limit) == ("server", 2048)


def test_destinations_take_the_top_level_keys_as_defaults_in_file_order(tmp_path: Path) -> None:
    found = loaded(tmp_path, TWO)
    assert found.names == ("home", "offsite")
    home, offsite = found.configs
    assert (home.host, home.port, home.rate_limit, home.connect_timeout) == \
        ("nas", None, 1024**2, 5.0)
    assert (offsite.host, offsite.port, offsite.rate_limit, offsite.resume_window) == \
        ("backup.example.org", 2222, 5 * 1024**2, 3600.0)
    assert home.resume_buffer == offsite.resume_buffer == 4194304
    assert home.resume_window == SETTINGS["resume_window"].default


@pytest.mark.parametrize(("text", "problem"), [
    ("host: a\ndestinations:\n  home: {host: b}\n",
     "C:1: host: not with destinations: give each destination its host"),
    ("destinations: {}\n",
     f"C:1: destinations: must map 1 to {MAX_DESTINATIONS} destination names to their settings"),
    ("destinations: [home]\n",
     f"C:1: destinations: must map 1 to {MAX_DESTINATIONS} destination names to their settings"),
    ("destinations:\n  Home: {host: b}\n",
     "C:2: destinations.Home: a destination is a lowercase word of a-z, 0-9, '_', '-' "
     "(at most 32 characters, starting with a letter)"),
    ("destinations:\n  home: nas\n",
     "C:2: destinations.home: must be a mapping of settings ({host: ...})"),
    ("destinations:\n  home: {port: 22}\n", "C: destinations.home.host: required"),
    ("destinations:\n  home: {host: b, hots: c}\n",
     "C:2: destinations.home.hots: unknown key (see carrier.yaml.example)"),
    ("destinations:\n  home: {host: b, resume_buffer: 4194304}\n",
     "C:2: destinations.home.resume_buffer: one value for every destination: set it at "
     "the top level"),
    ("destinations:\n  home: {host: b, known_hosts: null}\n",
     "C:2: destinations.home.known_hosts: may not be null (host keys are always verified)"),
    ("destinations:\n  home: {host: b, rate_limit: 5X}\n",
     "C:2: destinations.home.rate_limit: must be a number of bytes per second, at least "
     "1024 (or with K, M or G: 5M)"),
    ("destinations:\n  home: {host: b}\n  home: {host: c}\n",
     "C:3: destinations.home: given twice (first on line 2): keep one"),
    ("destinations:\n" + "".join(f"  d{n}: {{host: h}}\n" for n in range(MAX_DESTINATIONS + 1)),
     f"C:1: destinations: must map 1 to {MAX_DESTINATIONS} destination names to their settings"),
])
def test_each_refusal_names_the_file_line_and_key(tmp_path: Path, text: str,
                                                   problem: str) -> None:
    assert refusal(tmp_path, text) == problem


def test_ssh_conn_cannot_pick_among_destinations(tmp_path: Path) -> None:
    assert refusal(tmp_path, TWO, SSH_CONN="b@server") == \
        "SSH_CONN: cannot be used with destinations in C"


def test_every_problem_of_several_destinations_at_once(tmp_path: Path) -> None:
    text = "port: 0\ndestinations:\n  home: {host: b, port: 99999}\n  offsite: {user: 'a b'}\n"
    assert refusal(tmp_path, text).split("; ") == [
        "C:1: port: must be an integer from 1 to 65535",
        "C:3: destinations.home.port: must be an integer from 1 to 65535",
        "C:4: destinations.offsite.user: must be an account name of [A-Za-z0-9_.-]",
        "C: destinations.offsite.host: required",
    ]


def test_an_unknown_destination_is_a_usage_error(tmp_path: Path) -> None:
    found = loaded(tmp_path, TWO)
    assert [config.destination for config in found.pick(("offsite", "home"))] == \
        ["offsite", "home"]
    assert found.one(None).destination == "home"
    with pytest.raises(UsageError, match="no destination 'nas' in .* \\(it has: home, offsite\\)"):
        found.pick(("home", "nas"))


@pytest.mark.parametrize(("argv", "request_"), [
    (["put", "--to", "home,offsite", "x"], Request("put", "x", False, ("home", "offsite"))),
    (["put", "--commit", "--to=offsite", "x"], Request("put", "x", True, ("offsite",))),
    (["put", "--to", "offsite", "--commit", "x"], Request("put", "x", True, ("offsite",))),
    (["list", "--from", "home"], Request("list", None, destinations=("home",))),
    (["list", "--from=home", "lap"], Request("list", "lap", destinations=("home",))),
    (["get", "--from", "offsite", "x"], Request("get", "x", destinations=("offsite",))),
    (["info", "--from", "offsite"], Request("info", None, destinations=("offsite",))),
    (["destinations"], Request("destinations", None)),
])
def test_to_and_from_name_destinations(argv: list[str], request_: Request) -> None:
    assert parse_arguments(argv) == request_


@pytest.mark.parametrize("argv", [
    ["put", "--to", "home,home", "x"],  # twice
    ["put", "--to", "Home", "x"],
    ["put", "--to", "", "x"],
    ["put", "--to"],
    ["put", "--to", "a", "--to", "b", "x"],
    ["put", "--from", "home", "x"],  # put takes --to
    ["commit", "--to", "home", "x"],  # commit goes where the put staged
    ["list", "--to", "home"],
    ["list", "--from", "a,b"],
    ["check", "--from", "-x", "x"],
    ["put", "--commit=yes", "x"],
    ["destinations", "x"],
])
def test_bad_destination_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_arguments(argv)


def test_help_shows_the_options() -> None:
    printed = parse_arguments(["put", "--help"])
    assert isinstance(printed, Printout)
    assert printed.text.startswith("usage: qbackup-carrier put [--to D[,D...]] [--commit]"
                                   " [--partial-ok] NAME")


def service(verb: str, stdin: bytes) -> Request:
    read, write = os.pipe()
    os.write(write, stdin)
    os.close(write)
    try:
        return service_request(verb, {"QREXEC_REMOTE_DOMAIN": "dom0",
                                      "QREXEC_SERVICE_ARGUMENT": verb}, read)
    finally:
        os.close(read)


@pytest.mark.parametrize(("verb", "stdin", "request_"), [
    ("check", b"x\n", Request("check", "x")),
    ("check", b"x\noffsite\n", Request("check", "x", destinations=("offsite",))),
    ("list", b"\nhome\n", Request("list", None, destinations=("home",))),
    ("info", b"\n", Request("info", None)),
    ("info", b"", Request("info", None)),
    ("info", b"\noffsite\n", Request("info", None, destinations=("offsite",))),
    ("get", b"x\nhome", Request("get", "x", destinations=("home",))),
    ("destinations", b"", Request("destinations", None)),
])
def test_the_service_reads_a_destination_from_the_second_line(
    verb: str, stdin: bytes, request_: Request
) -> None:
    assert service(verb, stdin) == request_


@pytest.mark.parametrize(("verb", "stdin"), [
    ("check", b"x\nOffsite\n"),
    ("check", b"x\nhome\nmore\n"),
    ("commit", b"x\nhome\n"),  # commit and transfer answer for every destination
    ("transfer", b"x\nhome\n"),
    ("info", b"x\n"),
    ("list", b"\n" + b"a" * 600 + b"\n"),
])
def test_the_service_refuses_a_bad_second_line(verb: str, stdin: bytes) -> None:
    with pytest.raises(UsageError):
        service(verb, stdin)
