"""python -m qbackup_extract: the same as the qbackup-extract command."""

from qbackup_extract.cli import console_main

console_main()
