"""qbackup-extract: get VM images out of a Qubes backup (format version 4) on
any Linux machine, from a file, standard input or the storage account over
ssh, without Qubes. Standard library plus python3-cryptography (AES)."""
