"""Which compression filters a backup may use, and how restore is told about them.

Qubes' backup engine runs any program named as `compression` in the profile,
and writes its name into the backup header. Restore is pickier
(docs/QUBES.md, "Compression"): Qubes 4.2 accepts only gzip, bzip2 and xz
from the header; 4.3.13 and later also lzma, pbzip2, pigz, zstd and zstdmt
when the program is installed in dom0; anything else needs
`--compression-filter NAME`. dom0 records the filter of every backup and
passes it to verify and restore, so a backup restores on both releases as
long as the program is installed in dom0.
"""

from __future__ import annotations

import re

# qubesadmin/backup/restore.py (release4.2): KNOWN_COMPRESSION_FILTERS.
ALWAYS_RESTORABLE_FILTERS = frozenset({"gzip", "bzip2", "xz"})
# qubesadmin/backup/restore.py (release4.3, from v4.3.13): OPTIONAL_COMPRESSION_FILTERS,
# accepted when installed; on 4.2 (and any release) with --compression-filter.
OPTIONAL_RESTORABLE_FILTERS = frozenset({"lzma", "pbzip2", "pigz", "zstd", "zstdmt"})
# The filters qbackup allows in a job: restorable on 4.2 and 4.3 (the optional
# ones need the program installed in dom0). Config validation imports this.
RESTORABLE_FILTERS = ALWAYS_RESTORABLE_FILTERS | OPTIONAL_RESTORABLE_FILTERS
# restore.py refuses a header value outside [A-Za-z0-9-] ("Invalid backup header").
_HEADER_VALUE = re.compile(r"^[A-Za-z0-9-]*$")
DEFAULT_FILTER = "gzip"  # qubes/backup.py DEFAULT_COMPRESSION_FILTER


def filter_name(compression: bool | str | None) -> str | None:
    """Given a job's `compression` (True, False, a program name, or None when
    unknown), return the filter named in the backup header: the program, gzip
    for True, None for no compression or unknown."""
    if isinstance(compression, str):
        return compression
    if compression is True:
        return DEFAULT_FILTER
    return None


def is_restorable(compression: bool | str) -> bool:
    """Given a job's `compression`, return whether Qubes 4.2 and 4.3 can both
    restore what it produces (given the program in dom0)."""
    name = filter_name(compression)
    return name is None or (name in RESTORABLE_FILTERS and bool(_HEADER_VALUE.match(name)))


def restore_options(compression: bool | str | None) -> list[str]:
    """Given the `compression` a backup was made with (None if unknown),
    return the qvm-backup-restore options it needs: `--compression-filter
    NAME` for a named program (harmless for gzip/bzip2/xz, required for the
    others on 4.2), nothing otherwise."""
    if isinstance(compression, str):
        return ["--compression-filter", compression]
    return []
