"""qubes.xml, as a backup carries it: which VMs it holds, their classes, and
where their files are (the `backup-path` feature: `vmNNN/`, or
`dom0-home/USER` for dom0's home). Authenticated, yet read as hostile: a
name or path that could leave DEST, or an absurd size, is refused."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree  # noqa: S405  (input authenticated; see parse_qubes_xml)
from dataclasses import dataclass

from qbackup_extract.errors import ExtractError

MAX_QUBES_XML = 1024 * 1024  # as Qubes' restore bounds header + qubes.xml
# Qubes' own rule for VM names (qubes/vm/__init__.py validate_name).
VM_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_.-]{0,30}")
VM_PATH = re.compile(r"vm[0-9]{1,6}/")
HOME_PATH = re.compile(r"dom0-home/[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,31}")
DOM0 = "dom0"
HOME_DIR = "dom0-home"
# A VM's backup-size larger than this is not a VM (threat: a size meant to
# overflow or to make a check of free space meaningless).
MAX_VM_SIZE = 2**50


@dataclass(frozen=True)
class BackedUpVM:
    """A VM whose files the backup holds: NAME, CLASS, SIZE (bytes, as Qubes
    counted them), PATH (the directory of its parts in the archive)."""

    name: str
    klass: str
    size: int
    path: str

    @property
    def output_name(self) -> str:
        """Return the directory it is extracted to, under DEST."""
        return HOME_DIR if self.name == DOM0 else self.name


def feature(domain: ElementTree.Element, name: str) -> str | None:
    """Given a <domain>, return the text of its feature NAME, or None."""
    for node in domain.findall("./features/feature"):
        if node.get("name") == name:
            return node.text or ""
    return None


def read_domain(domain: ElementTree.Element) -> BackedUpVM | None:
    """Given a <domain> element, return the BackedUpVM it describes, or None if
    the backup holds no files of it; raise ExtractError if it is hostile."""
    if (feature(domain, "backup-content") or "").lower() not in ("true", "1"):
        return None
    klass = domain.get("class") or "?"
    if klass == "AdminVM":
        name = DOM0
    else:
        name = next((node.text or "" for node in domain.findall("./properties/property")
                     if node.get("name") == "name"), "")
    path = feature(domain, "backup-path") or ""
    size_text = feature(domain, "backup-size") or "0"
    # threat: names and paths that leave DEST ('/', '..') or collide with dom0's home
    if not VM_NAME.fullmatch(name) or name == HOME_DIR:
        raise ExtractError("qubes.xml: a VM name is not a valid Qubes VM name")
    pattern = HOME_PATH if name == DOM0 else VM_PATH
    if not pattern.fullmatch(path):
        raise ExtractError(f"qubes.xml: {name}: invalid backup-path")
    if not size_text.isdigit() or int(size_text) > MAX_VM_SIZE:
        raise ExtractError(f"qubes.xml: {name}: invalid backup-size")
    if not re.fullmatch(r"[A-Za-z]{1,40}", klass):
        raise ExtractError(f"qubes.xml: {name}: invalid class")
    return BackedUpVM(name=name, klass=klass, size=int(size_text), path=path)


def parse_qubes_xml(data: bytes) -> list[BackedUpVM]:
    """Given qubes.xml, return the VMs the backup holds, in document order;
    raise ExtractError if it is malformed or hostile."""
    if len(data) > MAX_QUBES_XML:
        raise ExtractError("qubes.xml: too large")
    # It is authenticated (the passphrase) before it is parsed, and expat
    # (>= 2.4.1) refuses entity-expansion bombs; no DTD or external entity is fetched.
    try:
        root = ElementTree.fromstring(data)  # noqa: S314
    except ElementTree.ParseError:
        raise ExtractError("qubes.xml: not well-formed XML") from None
    vms = [vm for vm in map(read_domain, root.findall("./domains/domain")) if vm is not None]
    names = [vm.name for vm in vms]
    paths = [vm.path for vm in vms]
    if len(set(names)) != len(names) or len(set(paths)) != len(paths):
        raise ExtractError("qubes.xml: two VMs share a name or a backup-path")
    return vms
