#!/usr/bin/python3
"""A HOSTILE login shell for the carrier's tests: speaks SSH for real, lies in
its replies. The lie is chosen by the file ~/mode (one word).

sshd runs it as ``hostile_shell.py -c COMMAND``. Standard library only: it runs
under Debian's /usr/bin/python3 as a test account.
"""

import hashlib
import json
import os
import struct
import sys
import time

MODE = open(os.path.expanduser("~/mode")).read().strip()
OUT = sys.stdout.buffer


def record(name, size, sha256):
    return {"name": name, "size": size, "sha256": sha256, "mtime": 1700000000}


def line(value):
    OUT.write(json.dumps(value).encode() + b"\n")


def endless(data):
    try:
        while True:
            OUT.write(data)
    except BrokenPipeError:
        sys.exit(0)


NESTED = b"[" * 4000 + b"\n"  # a short line that is deeper than json's recursion limit


def put(name):
    if MODE == "cut-then-busy":
        # The session ends (as by the server's idle timeout) mid-upload...
        line({"offset": 0})
        OUT.flush()
        sys.stdin.buffer.read(1000)
        sys.exit(74)
    if MODE == "stall":
        # A server that never starts (a hung disk) while sshd answers keepalives.
        time.sleep(3600)
    line({"offset": 0})  # protocol 3: put answers where the stream starts
    OUT.flush()
    if MODE == "stall-after-offset":
        # A server that stops reading (a hung disk) while sshd answers keepalives.
        time.sleep(3600)
    stream = sys.stdin.buffer.read()
    size, digest = struct.unpack(">Q32s", stream[-40:])
    good = record(name, size, digest.hex())
    if MODE == "wrong-digest":
        line({**good, "sha256": "0" * 64})
    elif MODE == "wrong-size":
        line({**good, "size": size + 1})
    elif MODE == "wrong-name":
        line({**good, "name": "other"})
    elif MODE == "garbage":
        OUT.write(b"\x00\xff\x1b[2Jgarbage\n")
    elif MODE == "control-characters":
        line({**good, "name": "\x1b]0;pwned\x07"})
    elif MODE == "invalid-utf8":
        OUT.write(b'{"name": "\xff\xfe", "size": 1, "sha256": null, "mtime": null}\n')
    elif MODE == "endless":
        endless(b"A" * 65536)
    elif MODE == "endless-stderr":
        sys.stdout = sys.stderr
        OUT.flush()
        try:
            while True:
                sys.stderr.buffer.write(b"\x1b[31m" * 8192)
        except BrokenPipeError:
            sys.exit(0)
    elif MODE == "two-lines":
        line(good)
        line(good)
    elif MODE == "nested":
        OUT.write(NESTED)
    elif MODE == "silent-success":
        pass
    elif MODE == "no-newline":
        OUT.write(json.dumps(good).encode())
    elif MODE == "honest" or MODE.startswith("commit-"):
        # The put is honest; the lie (if any) comes with the commit.
        with open(os.path.expanduser("~/staged"), "w") as staged:
            json.dump(good, staged)
        line(good)


def commit(name):
    try:
        with open(os.path.expanduser("~/staged")) as staged:
            good = json.load(staged)
    except FileNotFoundError:
        good = record(name, 1, "a" * 64)
    if MODE == "commit-wrong-digest":
        line({**good, "sha256": "0" * 64})
    elif MODE == "commit-wrong-size":
        line({**good, "size": good["size"] + 1})
    elif MODE == "commit-wrong-name":
        line({**good, "name": "other"})
    elif MODE == "commit-no-digest":
        line({**good, "sha256": None})
    elif MODE == "commit-garbage":
        OUT.write(b"\x1b[2J\xff not json\n")
    elif MODE == "commit-endless":
        endless(b"B" * 65536)
    elif MODE == "commit-two-lines":
        line(good)
        line(good)
    elif MODE == "commit-silent":
        pass
    elif MODE == "nested":
        OUT.write(NESTED)
    elif MODE == "honest":
        line(good)


GET_DATA = b"backup bytes " * 1000


def listing(prefix):
    good = record(prefix + "a", 1, "a" * 64)
    if MODE.startswith("get-") and MODE != "get-unlisted":
        # The carrier asks `list NAME` for NAME's size before `get NAME`.
        size = len(GET_DATA) // 2 if MODE == "get-oversized" else len(GET_DATA)
        line(record(prefix, size, hashlib.sha256(GET_DATA).hexdigest()))
        line({"end": True, "count": 1, "truncated": False})
    elif MODE == "get-unlisted":
        line({"end": True, "count": 0, "truncated": False})
    elif MODE == "nested":
        OUT.write(NESTED)
    elif MODE == "endless":
        endless(json.dumps(good).encode() + b"\n")
    elif MODE == "long-line":
        OUT.write(b"{" + b" " * 10000 + b"}\n")
    elif MODE == "control-characters":
        line(good)
        line(record("\x1b[2J", 1, "a" * 64))
    elif MODE == "count-mismatch":
        line(good)
        line({"end": True, "count": 5, "truncated": False})
    elif MODE == "outside-prefix":
        line(record("elsewhere", 1, "a" * 64))
        line({"end": True, "count": 1, "truncated": False})
    elif MODE == "no-end":
        line(good)
    elif MODE == "trailing":
        line(good)
        line({"end": True, "count": 1, "truncated": False})
        line(good)


def get(name):
    data = GET_DATA
    digest = hashlib.sha256(data).digest()
    frame = struct.pack(">cI", b"D", len(data)) + data
    end = struct.pack(">cI", b"E", 40) + struct.pack(">Q32s", len(data), digest)
    if MODE == "get-bad-digest":
        end = struct.pack(">cI", b"E", 40) + struct.pack(">Q32s", len(data), b"\0" * 32)
    elif MODE == "get-bad-size":
        end = struct.pack(">cI", b"E", 40) + struct.pack(">Q32s", len(data) - 1, digest)
    elif MODE == "get-truncated":
        end = b""
    elif MODE == "get-trailing":
        end += b"X"
    elif MODE == "get-garbage":
        frame = b"\x1b[2J not a frame at all"
        end = b""
    elif MODE == "get-endless":
        endless(frame)
    elif MODE in ("get-short", "get-other"):
        # A stream whose own end frame agrees with it, but that is not the
        # listed backup: half of it, or other bytes of the same size.
        data = data[: len(data) // 2] if MODE == "get-short" else data.upper()
        digest = hashlib.sha256(data).digest()
        frame = struct.pack(">cI", b"D", len(data)) + data
        end = struct.pack(">cI", b"E", 40) + struct.pack(">Q32s", len(data), digest)
    elif MODE == "get-stall":
        # Half the data, then silence: sshd keeps answering keepalives.
        OUT.write(frame[: len(frame) // 2])
        OUT.flush()
        time.sleep(3600)
    OUT.write(frame + end)


def check(name):
    mismatch = {**record(name, 1, "a" * 64), "ok": False}
    if MODE == "check-mismatch":
        # What the real shell does when the re-hash differs: record + exit 65.
        line(mismatch)
        OUT.flush()
        sys.exit(65)
    elif MODE == "check-mismatch-exit-0":
        line(mismatch)
    elif MODE == "check-ok-exit-65":
        line({**mismatch, "ok": True})
        OUT.flush()
        sys.exit(65)
    elif MODE == "check-mismatch-other-name":
        line({**mismatch, "name": "other"})
        OUT.flush()
        sys.exit(65)
    elif MODE == "check-mismatch-no-line":
        sys.exit(65)
    elif MODE == "nested":
        OUT.write(NESTED)
    else:
        line({**record("other", 1, "a" * 64), "ok": True})


def main():
    verb, _, argument = sys.argv[2].partition(" ")
    if MODE == "refuse-with-escapes":
        sys.stderr.buffer.write(b"\x1b[2J\x1b]0;owned\x07 no \xff\n space\r\n")
        sys.exit(69)
    if verb == "resume" and MODE == "cut-then-busy":
        sys.exit(69)  # ...and every resume finds the upload still busy
    if verb == "put":
        put(argument)
    elif verb == "commit":
        commit(argument)
    elif verb == "list":
        listing(argument)
    elif verb == "get":
        get(argument)
    elif verb == "check":
        check(argument)
    elif verb == "info":
        if MODE == "nested":
            OUT.write(NESTED)
        else:
            line({"protocol": 1, "free": -1})
    OUT.flush()


main()
