"""The Makefile's install and uninstall targets, and the dom0 qrexec policy.

Installs go into a DESTDIR (or, for the one real `make server`, into a
temporary prefix), so nothing here touches the machine's own /usr.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.server import REPO, remove_account

POLICY = REPO / "dom0" / "qubes-policy" / "30-qbackup.policy"
UNITS = sorted(
    p.name for p in (REPO / "dom0" / "systemd").iterdir() if p.suffix in (".service", ".timer")
)


def make(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run make in the repository; with CHECK, fail the test (showing make's
    stderr) unless it succeeded."""
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(REPO), *arguments],
        capture_output=True, text=True, check=False, env={**os.environ, "DESTDIR": ""},
    )
    assert not check or result.returncode == 0, result.stderr
    return result


def tree(root: Path) -> set[str]:
    """Every file and directory below ROOT, relative, without __pycache__."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


# --- make server -----------------------------------------------------------------
def test_make_server_without_user_refuses_before_installing_anything(tmp_path: Path) -> None:
    # Threat: a half-done install (files in place, no account) that
    # looks finished. No DESTDIR: a real install, but into a temporary prefix.
    prefix = [f"LIBDIR={tmp_path}/lib", f"SBINDIR={tmp_path}/sbin", f"CONFDIR={tmp_path}/etc"]
    result = make("server", *prefix, check=False)
    assert result.returncode != 0
    assert "make server user=NAME" in result.stderr and "nothing was installed" in result.stderr
    assert tree(tmp_path) == set()


def passwd_entry(name: str) -> str:
    """NAME's line of the account database, or "" (never the whole database:
    other test sessions add and remove their own accounts meanwhile)."""
    return subprocess.run(["getent", "passwd", name], capture_output=True, text=True,
                          check=False).stdout


# Threat: a half-done install (files in place, no account, or an account
# half converted) that looks finished. Everything setup-account.sh can
# refuse is refused before the first file is installed.
@pytest.mark.parametrize("refused", ["name", "key", "existing", "not-root"])
def test_make_server_refuses_before_installing_anything(
    tmp_path: Path, storage_name: str, refused: str, request: pytest.FixtureRequest
) -> None:
    # Where even a user who is not root could install (tmp_path's parents are root's only).
    prefix = Path(tempfile.mkdtemp(prefix="qbackup-make-server-", dir="/tmp"))
    prefix.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(prefix))
    where = [f"LIBDIR={prefix}/lib", f"SBINDIR={prefix}/sbin", f"CONFDIR={prefix}/etc"]
    user = "Not-A-Name" if refused == "name" else storage_name
    extra = [f"key={tmp_path}/missing.pub"] if refused == "key" else []
    if refused == "existing":  # a person's account: converted only with force=1
        subprocess.run(["useradd", "--shell", "/bin/bash", storage_name], check=True)
    before = passwd_entry(storage_name)
    command = ["make", "-s", "--no-print-directory", "-C", str(REPO), "server", f"user={user}",
               *where, *extra]
    if refused == "not-root":
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert result.returncode != 0
    message = {"name": "usage: setup-account.sh USER", "key": "missing.pub is not a file",
               "existing": "force=1", "not-root": "run as root"}[refused]
    first = result.stderr.splitlines()[0]
    assert message in first and first.endswith("(nothing was installed)"), result.stderr
    assert tree(prefix) == set()
    assert passwd_entry(storage_name) == before


@pytest.fixture
def storage_name() -> Iterator[str]:
    name = f"qbs-{secrets.token_hex(4)}"
    shells = Path("/etc/shells").read_bytes()
    yield name
    remove_account(name)
    shutil.rmtree(Path("/home") / name, ignore_errors=True)
    Path("/etc/shells").write_bytes(shells)


def test_make_server_then_uninstall_server_keeps_account_backups_and_config(
    tmp_path: Path, storage_name: str
) -> None:
    prefix = [f"LIBDIR={tmp_path}/lib", f"SBINDIR={tmp_path}/sbin", f"CONFDIR={tmp_path}/etc",
              f"APPARMOR_DIR={tmp_path}/apparmor"]
    shell = f"{tmp_path}/sbin/qbackup-shell"
    installed = make("server", f"user={storage_name}", *prefix)
    assert pwd.getpwnam(storage_name).pw_shell == shell
    # The hint repeats the command as the admin ran it: make's target.
    assert f"(add one with: make server user={storage_name} key=CARRIER_KEY.pub)" \
        in installed.stdout
    assert shell in Path("/etc/shells").read_text().splitlines()
    home = Path(pwd.getpwnam(storage_name).pw_dir)
    (home / "laptop-1").write_bytes(b"a backup")  # what puts would have stored
    result = make("uninstall-server", *prefix)
    assert tree(tmp_path) == {"etc", "etc/qbackup-shell.conf", "sbin"}
    assert shell not in Path("/etc/shells").read_text().splitlines()
    assert pwd.getpwnam(storage_name).pw_shell == shell  # the account stays, as do its backups
    assert (home / "laptop-1").read_bytes() == b"a backup"
    assert storage_name in result.stdout and "kept:" in result.stdout


# Threat: a profile copied where no kernel enforces it looks like protection.
@pytest.mark.parametrize("missing", ["apparmor", "apparmor_parser"])
def test_make_server_aa_without_apparmor_says_so_and_installs_nothing(
    tmp_path: Path, missing: str
) -> None:
    enabled = tmp_path / "enabled"
    if missing == "apparmor_parser":
        enabled.write_text("Y\n")  # the kernel has it, the tool is not installed
    result = make("server-aa", f"APPARMOR_DIR={tmp_path}/apparmor.d",
                  f"APPARMOR_ENABLED={enabled}", f"APPARMOR_PARSER={tmp_path}/apparmor_parser",
                  check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines()  # but make's own "*** Error 2"
             if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(lines) == 1 and lines[0].endswith("(nothing was installed)"), result.stderr
    assert ("no AppArmor" if missing == "apparmor" else "apparmor_parser is missing") in lines[0]
    assert not (tmp_path / "apparmor.d").exists()


# --- DESTDIR installs and uninstalls ---------------------------------------------------
@dataclass
class Part:
    install: str
    uninstall: str
    files: set[str]  # what must be installed (a subset of all that is)


PARTS = {
    "server": Part("server", "uninstall-server", {
        "usr/sbin/qbackup-shell", "usr/lib/qbackup/qbackup_protocol/wire.py",
        "usr/lib/qbackup/server_shell/main.py", "etc/qbackup/qbackup-shell.conf",
        "usr/share/man/man8/qbackup-shell.8", "usr/share/man/man8/qbackup-server.8"}),
    "templatevm": Part("templatevm", "uninstall-templatevm", {
        "usr/bin/qbackup-carrier", "usr/lib/qbackup/qbackup_protocol/wire.py",
        "usr/lib/qbackup/carrier_vm/cli.py", "etc/qubes-rpc/qubes.BackupCarrier",
        "usr/share/doc/qbackup/carrier.yaml.example", "usr/share/man/man1/qbackup-carrier.1"}),
    "dom0": Part("dom0", "uninstall-dom0", {
        "usr/bin/qbackup", "usr/lib/qbackup/qbackup_protocol/wire.py",
        "usr/lib/qbackup/dom0/cli.py",
        "etc/qubes/policy.d/30-qbackup.policy", "usr/share/doc/qbackup/qbackup.yaml.example",
        "usr/share/man/man1/qbackup.1", *(f"usr/lib/systemd/user/{unit}" for unit in UNITS)}),
    "extract": Part("extract", "uninstall-extract", {
        "usr/bin/qbackup-extract", "usr/lib/qbackup/qbackup_protocol/wire.py",
        "usr/lib/qbackup/qbackup_extract/cli.py", "usr/share/man/man1/qbackup-extract.1"}),
}
# What an admin or user put there: an uninstall must leave every one alone.
USER_FILES = {
    "etc/qbackup/qbackup.yaml": "jobs: {}\n",
    "etc/qubes/policy.d/30-user.policy": "",
    "usr/share/doc/qbackup/notes.txt": "mine\n",
}


@pytest.mark.parametrize("name", sorted(PARTS))
def test_uninstall_removes_what_install_put_and_nothing_else(tmp_path: Path, name: str) -> None:
    for relative, text in USER_FILES.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    before = tree(tmp_path)
    part = PARTS[name]
    make(part.install, f"DESTDIR={tmp_path}")
    assert part.files <= tree(tmp_path)
    make(part.uninstall, f"DESTDIR={tmp_path}")
    left = {path for path in tree(tmp_path) - before if not (tmp_path / path).is_dir()}
    # The server's config is the admin's from the first install on.
    assert left == ({"etc/qbackup/qbackup-shell.conf"} if name == "server" else set())
    for relative, text in USER_FILES.items():
        assert (tmp_path / relative).read_text() == text


# What each part's modules import of the protocol package: the carrier's
# contract with dom0 is not on the server; names (its durations) is in the
# carrier too.
PART_PROTOCOL = {
    "server": ("server_shell", {"wire", "names"}),
    "templatevm": ("carrier_vm", {"wire", "client", "carrier_service", "text", "names"}),
    "dom0": ("dom0", {"wire", "client", "names", "carrier_service", "text"}),
    "extract": ("qbackup_extract", {"wire", "client", "text"}),
}


@pytest.mark.parametrize("name", sorted(PARTS))
def test_an_upgrade_removes_the_single_protocol_module_of_older_versions(
    tmp_path: Path, name: str
) -> None:
    old = tmp_path / "usr/lib/qbackup/qbackup_protocol.py"
    old.parent.mkdir(parents=True)
    old.write_text("PROTOCOL_VERSION = 3\n")
    make(PARTS[name].install, f"DESTDIR={tmp_path}")
    assert not old.exists()


@pytest.mark.parametrize("name", sorted(PART_PROTOCOL))
def test_each_part_installs_exactly_the_protocol_modules_it_imports(
    tmp_path: Path, name: str
) -> None:
    package, modules = PART_PROTOCOL[name]
    make(PARTS[name].install, f"DESTDIR={tmp_path}")
    lib = tmp_path / "usr/lib/qbackup"
    installed = {p.stem for p in (lib / "qbackup_protocol").glob("*.py")} - {"__init__"}
    assert installed == modules
    # Every module of the part imports from the installed tree alone, on the
    # system's python (-I: no venv, no current directory on sys.path).
    loaded = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", "import importlib, pkgutil, sys\n"
         f"sys.path.insert(0, {str(lib)!r})\n"
         f"for module in pkgutil.iter_modules([{str(lib / package)!r}]):\n"
         f"    importlib.import_module({package!r} + '.' + module.name)\n"
         "print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=False, cwd="/",
    )
    assert loaded.returncode == 0, loaded.stderr
    assert {m.removeprefix("qbackup_protocol.") for m in loaded.stdout.split()
            if m.startswith("qbackup_protocol.")} == modules


def test_uninstalling_one_part_keeps_what_another_part_shares(tmp_path: Path) -> None:
    make("dom0", f"DESTDIR={tmp_path}")
    make("templatevm", f"DESTDIR={tmp_path}")
    make("uninstall-templatevm", f"DESTDIR={tmp_path}")
    assert PARTS["dom0"].files <= tree(tmp_path)  # protocol module and docs dir still there
    make("uninstall-dom0", f"DESTDIR={tmp_path}")
    assert not (tmp_path / "usr/lib/qbackup").exists()


def test_make_dom0_installs_every_unit_the_policy_and_the_example(tmp_path: Path) -> None:
    make("dom0", f"DESTDIR={tmp_path}")
    units = tmp_path / "usr/lib/systemd/user"
    assert sorted(p.name for p in units.iterdir()) == UNITS
    assert {"qbackup-status.service", "qbackup-status.timer"} <= set(UNITS)
    assert (tmp_path / "etc/qubes/policy.d/30-qbackup.policy").read_bytes() == POLICY.read_bytes()
    example = tmp_path / "usr/share/doc/qbackup/qbackup.yaml.example"
    assert example.read_bytes() == (REPO / "dom0/qbackup.yaml.example").read_bytes()
    assert not (tmp_path / "etc/qbackup/qbackup.yaml").exists()  # never a live config


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Given a unit file, return {"Section.Key": [values]} (comments skipped)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def test_the_status_timer_runs_status_with_max_age_daily() -> None:
    service = unit_settings(REPO / "dom0/systemd/qbackup-status.service")
    timer = unit_settings(REPO / "dom0/systemd/qbackup-status.timer")
    assert service["Service.Type"] == ["oneshot"]
    command = service["Service.ExecStart"]
    assert len(command) == 1
    assert re.fullmatch(r"/usr/bin/qbackup status --max-age [0-9]+[smhd]?", command[0])
    assert service["Service.TimeoutStartSec"] != ["infinity"]  # a status that hangs must end
    assert timer["Timer.OnCalendar"] == ["*-*-* 12:00:00"] and timer["Timer.Persistent"] == ["true"]
    assert timer["Install.WantedBy"] == ["timers.target"]
    # The subcommand and option the unit uses exist (the installed CLI's own help).
    result = subprocess.run([sys.executable, "-m", "dom0.cli", "status", "--help"],
                            capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == 0 and "--max-age" in result.stdout


# --- carrier TemplateVM --------------------------------------------------------------
@pytest.mark.parametrize(
    ("tool", "packages"),
    [("/usr/bin/dnf", "python3-asyncssh python3-pyyaml"),  # Fedora's names
     ("/usr/bin/apt-get", "python3-asyncssh python3-yaml")],  # Debian's
)
def test_templatevm_deps_asks_the_template_s_own_package_manager(tool: str, packages: str) -> None:
    result = make("-n", "templatevm-deps", f"PKG_TOOL={tool}")
    assert f"{tool} install -y {packages}" in result.stdout.splitlines()


def test_templatevm_deps_picks_apt_get_on_this_debian_machine() -> None:
    assert not shutil.which("dnf")
    result = make("-n", "templatevm-deps")
    assert f"{shutil.which('apt-get')} install -y python3-asyncssh python3-yaml" in result.stdout


def test_templatevm_deps_without_a_package_manager_says_what_to_install() -> None:
    result = make("templatevm-deps", "PKG_TOOL=", check=False)
    assert result.returncode == 2 and "asyncssh and PyYAML" in result.stderr


def test_make_templatevm_installs_files_that_run_on_the_system_python(tmp_path: Path) -> None:
    # No DESTDIR: the launcher must name where the modules really are.
    make("templatevm", *(f"{key}={tmp_path}/{key.lower()}" for key in
                         ("LIBDIR", "BINDIR", "QUBES_RPC_DIR", "DOCDIR")))
    result = subprocess.run(["/usr/bin/python3", "-I", str(tmp_path / "bindir/qbackup-carrier"),
                             "--help"], capture_output=True, text=True, check=False, cwd="/")
    assert result.returncode == 0, result.stderr


# --- the dom0 qrexec policy -------------------------------------------------------------
# A checker of Qubes 4.2's policy format (/etc/qubes/policy.d, as parsed by
# qubes-core-qrexec's qrexec/policy/parser.py on release4.2), written from
# its rules: `SERVICE ARGUMENT SOURCE TARGET ACTION [KEY=VALUE...]` per line,
# `#` comments, `!` directives; tokens and parameters as below.
class PolicyError(ValueError):
    pass


RPC_CHARS = re.compile(r"[A-Za-z0-9._+-]+")
SOURCE_EXACT = {"@anyvm", "@adminvm", "*"}
TARGET_EXACT = SOURCE_EXACT | {"@default", "@dispvm"}
PREFIXES = ("@tag:", "@type:", "@dispvm:@tag:", "@dispvm:")
ACTION_PARAMETERS = {
    "deny": {"notify"},
    "allow": {"target", "user", "notify", "autostart"},
    "ask": {"target", "default_target", "user", "notify", "autostart"},
}
FILE_NAME = re.compile(r"[0-9a-z_.-]+\.policy")


@dataclass
class Rule:
    service: str
    argument: str
    source: str
    target: str
    action: str


def check_token(token: str, exact: set[str], where: str) -> str:
    token = "@adminvm" if token == "dom0" else token  # the parser's alias
    if token in exact:
        return token
    if token.startswith("@"):
        prefix = next((p for p in PREFIXES if token.startswith(p)), None)
        if prefix is None or not token[len(prefix):] or token[len(prefix):].startswith("@"):
            raise PolicyError(f"invalid {where} token {token!r}")
        return token
    if token == "" or not re.fullmatch(r"[A-Za-z0-9_.-]+", token):
        raise PolicyError(f"invalid {where} name {token!r}")
    return token


def parse_policy(text: str) -> list[Rule]:
    """Given a policy file's text, return its rules; raise PolicyError (with
    the line number) for anything the 4.2 parser would refuse."""
    rules = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("!"):
                raise PolicyError("directives (!include...) are not used by qbackup's policy")
            fields = line.split()
            if len(fields) < 5:
                raise PolicyError("wrong number of fields")
            service, argument, source, target, action, *parameters = fields
            if service != "*" and (not RPC_CHARS.fullmatch(service) or "+" in service):
                raise PolicyError(f"invalid service {service!r}")
            if argument != "*":
                if not RPC_CHARS.fullmatch(argument) or not argument.startswith("+"):
                    raise PolicyError(f"argument {argument!r} must be * or start with +")
                if service == "*":
                    raise PolicyError("only * argument allowed for * service")
            if action not in ACTION_PARAMETERS:
                raise PolicyError(f"invalid action {action!r}")
            seen: set[str] = set()
            for parameter in parameters:
                key, equals, value = parameter.partition("=")
                if not equals or key not in ACTION_PARAMETERS[action] or key in seen:
                    raise PolicyError(f"invalid parameter {parameter!r} for {action}")
                if key in ("notify", "autostart") and value not in ("yes", "no"):
                    raise PolicyError(f"{key} must be yes or no")
                seen.add(key)
            rules.append(Rule(service, argument,
                              check_token(source, SOURCE_EXACT, "source"),
                              check_token(target, TARGET_EXACT, "target"), action))
        except PolicyError as error:
            raise PolicyError(f"line {number}: {error}") from None
    return rules


def matches(token: str, domain: str) -> bool:
    """Whether a rule's SOURCE/TARGET token matches DOMAIN (a VM name,
    "@adminvm" for dom0, or a keyword a caller may name as target). Only the
    tokens our file may use are evaluated; @tag:/@type: need Qubes' data."""
    if token in ("*", domain):
        return True
    if token == "@anyvm":
        return domain != "@adminvm"  # @anyvm never matches dom0, in 4.2 as later
    return False


def first_match(rules: list[Rule], service: str, argument: str, source: str,
                target: str) -> Rule | None:
    for rule in rules:
        if (rule.service in ("*", service) and rule.argument in ("*", argument)
                and matches(rule.source, source) and matches(rule.target, target)):
            return rule
    return None


@pytest.mark.parametrize(
    "line",
    [
        "qubes.BackupCarrier * @anyvm",  # too few fields
        "qubes.BackupCarrier+get * @anyvm @anyvm deny",  # + in the service
        "qubes.BackupCarrier get @anyvm @anyvm deny",  # argument without +
        "* +get @anyvm @anyvm deny",  # argument for any service
        "qubes.BackupCarrier * @default @anyvm deny",  # @default is a target only
        "qubes.BackupCarrier * @anyvm @tag: deny",  # empty tag
        "qubes.BackupCarrier * @anyvm @anyvm refuse",  # no such action
        "qubes.BackupCarrier * @anyvm @anyvm deny target=dom0",  # deny takes notify only
        "qubes.BackupCarrier * @anyvm @anyvm deny notify=maybe",
        "!include-dir /tmp",
    ],
)
def test_the_policy_checker_refuses_what_qubes_refuses(line: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(line + "\n")


def test_the_policy_file_parses_and_has_an_allowed_name() -> None:
    assert FILE_NAME.fullmatch(POLICY.name)
    rules = parse_policy(POLICY.read_text())
    assert rules and all(rule.action == "deny" for rule in rules)
    # Read before the user's own file: an allow there cannot undo the deny.
    assert sorted([POLICY.name, "30-user.policy", "90-default.policy"])[0] == POLICY.name


@pytest.mark.parametrize("source", ["sys-backup", "sys-firewall", "untrusted", "disp1234"])
@pytest.mark.parametrize("target", ["sys-backup", "@default", "@dispvm", "@adminvm", "other"])
@pytest.mark.parametrize("argument", ["+list", "+check", "+info", "+get", "+commit", "+abort", "+"])
def test_the_policy_denies_every_vm_calling_the_carrier_service(
    source: str, target: str, argument: str
) -> None:
    # Threat: a compromised VM calling `commit` or `get` in a
    # carrier. dom0's own calls bypass the policy (qubesd runs them directly).
    rule = first_match(parse_policy(POLICY.read_text()), "qubes.BackupCarrier", argument,
                       source, target)
    assert rule is not None and rule.action == "deny"


def test_the_policy_leaves_other_services_alone() -> None:
    rules = parse_policy(POLICY.read_text())
    assert first_match(rules, "qubes.Filecopy", "+", "work", "sys-backup") is None


def test_uninstall_dom0_refuses_while_a_timer_is_enabled(tmp_path: Path) -> None:
    # A removed unit with its enable link left behind fails every login and
    # can no longer be disabled by name. No DESTDIR (the check is for real
    # installs), so every directory points into tmp_path.
    where = [f"{key}={tmp_path}/{key.lower()}" for key in
             ("LIBDIR", "BINDIR", "SYSTEMD_USER_DIR", "POLICY_DIR", "DOCDIR")]
    make("dom0", *where)
    wants = tmp_path / "home/user/.config/systemd/user/timers.target.wants"
    wants.mkdir(parents=True)
    (wants / "qbackup-status.timer").symlink_to(tmp_path / "systemd_user_dir/qbackup-status.timer")
    installed = tree(tmp_path)
    enabled = f"ENABLED_UNITS={tmp_path}/home/*/.config/systemd/user/*.wants/qbackup*"
    result = make("uninstall-dom0", *where, enabled, check=False)
    assert result.returncode == 2 and "systemctl --user disable" in result.stderr
    assert tree(tmp_path) == installed  # nothing was removed
    (wants / "qbackup-status.timer").unlink()
    make("uninstall-dom0", *where, enabled)
    assert not (tmp_path / "bindir/qbackup").exists()
