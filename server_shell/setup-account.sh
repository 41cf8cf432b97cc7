#!/bin/sh
# setup-account.sh USER [PUBLIC_KEY_FILE] — make USER a qbackup storage account
# (idempotent). Run as root by `make server user=USER [key=FILE] [force=1]`
# with SHELL_PATH=/usr/sbin/qbackup-shell. Afterwards:
#   - SHELL_PATH is listed in /etc/shells;
#   - USER exists (created with a 0700 home and no password if missing) and has
#     SHELL_PATH as login shell;
#   - ~/.ssh (0700) and ~/.ssh/authorized_keys (0600) exist, owned by USER, and
#     every key line in it that is not commented out carries the forced command
#     `restrict,command="SHELL_PATH"` (see the rules in the helper below);
#   - with PUBLIC_KEY_FILE, that key is in authorized_keys in exactly that form.
# With CHECK_ONLY=1 (what `make server` runs before it installs anything) it
# makes every check it can and changes nothing: exit 0 if the real run would
# not refuse.
#
# Where root acts, and where it never does (threat: an account that
# swaps ~/.ssh for a symlink while root works in it gets root to chown or chmod
# any file it likes, e.g. /usr/local/bin):
#   - root changes only system files, with the admin's own tools: useradd and
#     usermod for the account, /etc/shells through a new file renamed over it;
#   - root does NOTHING inside the account's home, not even a check it relies
#     on. Everything there is done by a small Python program running AS THE
#     ACCOUNT (setpriv, no new privileges, no controlling terminal, umask 077),
#     opening each level with O_NOFOLLOW. A link the account plants or swaps in
#     can only make that program do what the account could do itself.
#   Residual risk: the account can trace its own helper and make it print
#   anything (we show its output stripped of control characters) or keep its
#   output pipe open (this script then waits; end the account's processes).
set -eu

user=${1:-}
key_file=${2:-}
shell_path=${SHELL_PATH:-/usr/sbin/qbackup-shell}

check_only=${CHECK_ONLY:-}

fail() {
	echo "setup-account.sh: $*${check_only:+ (nothing was installed)}" >&2
	exit 1
}

# The name goes into useradd/usermod arguments: accept only what useradd's
# own default policy accepts, so nothing here can be read as an option.
case "$user" in
'' | -* | *[!a-z0-9_-]*) fail "usage: setup-account.sh USER [PUBLIC_KEY_FILE] (USER: lowercase letters, digits, _ and -)" ;;
esac
# The shell's path goes into authorized_keys between double quotes.
case "$shell_path" in
/*[!A-Za-z0-9/._-]* | [!/]*) fail "SHELL_PATH must be an absolute path of letters, digits, /, ., _ and -" ;;
esac
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -n "$check_only" ] || [ -x "$shell_path" ] || fail "$shell_path is missing; install the qbackup-server package or run make server-files first"
# The key file may be anywhere, even somewhere an account can write: what root
# reads from it goes on only if it is one public key line (never, say, the
# /etc/shadow a planted link led to: the helper's argv is the account's to read).
public_key=
if [ -n "$key_file" ]; then
	[ -f "$key_file" ] || fail "$key_file is not a file (give the carrier's .pub file)"
	# timeout: a FIFO swapped in after the test above must not hang root's run.
	public_key=$(timeout 10 head -c 16384 -- "$key_file") ||
		fail "$key_file could not be read within 10 s"
	key_types='ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com'
	if [ "$(printf '%s\n' "$public_key" | wc -l)" -ne 1 ] ||
		! printf '%s\n' "$public_key" | LC_ALL=C grep -Eqx "($key_types)[ 	]+[A-Za-z0-9+/]+={0,3}([ 	][ -~]*)?"; then
		fail "$key_file: the public key file must hold one OpenSSH public key line (type, key, comment), no options"
	fi
fi

# The program that works inside the home, as the account. argv: HOME SHELL
# KEY [check] (KEY may be empty; `check`: open and check, change nothing).
# Rules for existing lines of authorized_keys:
#   - `restrict,command="SHELL" KEY ...` (what we write): kept as it is;
#   - `restrict KEY ...` (what qbackup documented before the forced command):
#     rewritten to the forced-command form — it was meant for
#     qbackup and only loses power;
#   - every other key line (a person's login key, other options): commented
#     out, never rewritten. Giving a key we did not see added for qbackup
#     access to the backups is the admin's decision, and merging its options
#     (quotes, from=, another command=) with ours is where mistakes hide.
helper=$(
	cat <<'PYTHON'
import os
import re
import stat
import sys

home, shell = sys.argv[1], sys.argv[2]
new_key = sys.argv[3] if len(sys.argv) > 3 else ""
check_only = sys.argv[4:] == ["check"]
PREFIX = f'restrict,command="{shell}"'
DISABLED = "# disabled by qbackup setup-account.sh (not a forced-command line): "
KEY = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com)[ \t]+[A-Za-z0-9+/]+={0,3}([ \t].*)?"
)
HEADER = f"""\
# qbackup storage account: one line per carrier VM key, each starting with
# {PREFIX}
# (sshd runs only qbackup-shell for it: no sftp, scp, rsync, shell, pty or
# forwarding of any kind), for example:
# {PREFIX} ssh-ed25519 AAAAC3Nza...key... qbackup-carrier@my-qube
"""
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def fail(message):
    done = " (nothing was installed)" if check_only else ""
    print(f"setup-account.sh: {message}{done}", file=sys.stderr)
    sys.exit(1)


def open_own_directory(name, dir_fd=None):
    """Open directory NAME without following a link; it must be ours; make it 0700."""
    try:
        fd = os.open(name, FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
    except OSError as error:
        fail(f"{home}: cannot open {name} as a directory without following links ({error.strerror})")
    if os.fstat(fd).st_uid != os.getuid():
        fail(f"{home}: {name} does not belong to the account")
    if not check_only:
        os.fchmod(fd, 0o700)
    return fd


def convert(line):
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return line
    if stripped.startswith(PREFIX) and stripped[len(PREFIX):][:1] in (" ", "\t"):
        if KEY.fullmatch(stripped[len(PREFIX):].lstrip()):
            return stripped
    first, _, rest = stripped.replace("\t", " ").partition(" ")
    if first == "restrict" and KEY.fullmatch(rest.lstrip()):
        return f"{PREFIX} {rest.lstrip()}"
    return DISABLED + stripped


os.umask(0o077)
home_fd = open_own_directory(home)
if check_only:
    try:
        os.stat(".ssh", dir_fd=home_fd, follow_symlinks=False)
    except FileNotFoundError:
        sys.exit(0)  # nothing there to refuse
else:
    try:
        os.mkdir(".ssh", 0o700, dir_fd=home_fd)
    except FileExistsError:
        pass
ssh_fd = open_own_directory(".ssh", home_fd)
try:
    keys_fd = os.open("authorized_keys", FLAGS | os.O_NONBLOCK, dir_fd=ssh_fd)  # a FIFO must not block us
except FileNotFoundError:
    old = None
except OSError as error:
    fail(f"{home}/.ssh/authorized_keys: cannot open it without following links ({error.strerror})")
else:
    with os.fdopen(keys_fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            fail(f"{home}/.ssh/authorized_keys is not a regular file")
        old = stream.read().decode("utf-8", "replace")
if check_only:
    sys.exit(0)

lines = HEADER.splitlines() if old is None else old.splitlines()
converted = [convert(line) for line in lines]
rewritten = sum(1 for a, b in zip(lines, converted) if a != b and not b.startswith(DISABLED))
disabled = sum(1 for a, b in zip(lines, converted) if a != b and b.startswith(DISABLED))
if new_key:
    key_line = new_key.strip()
    if "\n" in key_line or not KEY.fullmatch(key_line):
        fail("the public key file must hold one OpenSSH public key line (type, key, comment), no options")
    key_line = re.sub(r"[^ -~]", "", key_line)  # the comment reaches terminals and logs
    wanted = f"{PREFIX} {key_line}"
    blob = key_line.split()[1]
    if not any(line.startswith(PREFIX) and blob in line.split() for line in converted):
        converted.append(wanted)
new = "".join(line + "\n" for line in converted)

if new != old:
    # A new file renamed over the old one: a reader never sees half a file,
    # and rename replaces a link named authorized_keys instead of following it.
    temporary = "authorized_keys.qbackup-new"
    try:
        os.unlink(temporary, dir_fd=ssh_fd)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=ssh_fd)
    with os.fdopen(fd, "wb") as stream:
        stream.write(new.encode())
        stream.flush()
        os.fsync(stream.fileno())
    os.rename(temporary, "authorized_keys", src_dir_fd=ssh_fd, dst_dir_fd=ssh_fd)
    os.fsync(ssh_fd)
else:
    fd = os.open("authorized_keys", FLAGS, dir_fd=ssh_fd)
    os.fchmod(fd, 0o600)
    os.close(fd)
if rewritten:
    print(f"setup-account.sh: {rewritten} key line(s) of the form `restrict KEY` now carry the forced command")
if disabled:
    print(f"setup-account.sh: {disabled} key line(s) without the forced command were commented out;"
          f" to let one in, replace its comment with: {PREFIX}")
PYTHON
)

# run_as_account UID GID ARG...: run the helper as the account. setsid: no
# controlling terminal, so nothing the account makes the helper do can push
# keystrokes into root's terminal (TIOCSTI); stdin is /dev/null; env -i: none
# of root's environment; setpriv drops every privilege before python starts.
# The account can steer its own helper (ptrace, same uid), so what root keeps
# of it is bounded: at most 64 KiB of output (a hard file-size limit the
# account cannot raise) and 120 s of time.
run_as_account() {
	run_uid=$1 run_gid=$2
	shift 2
	helper_output=$(mktemp) || fail "cannot create a temporary file"
	run_status=0
	(cd / && umask 077 && ulimit -f 128 &&
		exec timeout -k 5 120 env -i PATH=/usr/bin:/bin LC_ALL=C.UTF-8 \
		setsid -w setpriv --reuid="$run_uid" --regid="$run_gid" --clear-groups --no-new-privs \
		/usr/bin/python3 -I -S -c "$helper" "$@" </dev/null >"$helper_output" 2>&1) || run_status=$?
	head -c 65536 -- "$helper_output"
	rm -f -- "$helper_output"
	return "$run_status"
}

# prepare_home UID GID HOME [check]: run the helper; show its output without
# control characters (the account controls it); fail if it failed.
prepare_home() {
	if output=$(run_as_account "$1" "$2" "$3" "$shell_path" "$public_key" ${4:+"$4"}); then
		status=0
	else
		status=$?
	fi
	[ -z "$output" ] || printf '%s\n' "$output" | LC_ALL=C tr -cd '[:print:]\n' >&2
	[ "$status" -eq 0 ] || exit 1
}

# add_to_shells: add SHELL_PATH to /etc/shells the way a careful tool does — a
# new file with the same owner and mode renamed over the old one, and the old
# last line kept even when the file has no final newline.
add_to_shells() {
	grep -qxF "$shell_path" /etc/shells && return 0
	new=/etc/shells.qbackup-new
	rm -f "$new"
	(
		umask 022
		set -C # never write through something already there
		{
			cat /etc/shells
			[ -z "$(tail -c 1 /etc/shells)" ] || echo # $(...) drops a final newline
			echo "$shell_path"
		} >"$new"
	)
	chown --reference=/etc/shells "$new"
	chmod --reference=/etc/shells "$new"
	mv -f "$new" /etc/shells
}

# Every refusal comes before the first change: a refused run changes nothing.
if getent passwd "$user" >/dev/null; then
	# Converting an existing account takes its shell away and disables its
	# keys: never do that to a system account (root, daemon, www-data, ...),
	# and to any other account — a person's, or one an admin disabled with
	# nologin/false — only when asked to explicitly (FORCE=1).
	uid=$(id -u "$user")
	gid=$(id -g "$user")
	uid_min=$(awk '$1 == "UID_MIN" { print $2 }' /etc/login.defs 2>/dev/null)
	uid_max=$(awk '$1 == "UID_MAX" { print $2 }' /etc/login.defs 2>/dev/null)
	if [ "$uid" -lt "${uid_min:-1000}" ] || [ "$uid" -gt "${uid_max:-60000}" ]; then
		fail "$user is a system account (uid $uid outside ${uid_min:-1000}..${uid_max:-60000}); choose another name"
	fi
	current=$(getent passwd "$user" | cut -d: -f7)
	if [ "$current" != "$shell_path" ] && [ "${FORCE:-}" != 1 ]; then
		fail "$user exists with login shell ${current:-(none)}; to turn it into a backup-only account run again with force=1"
	fi
	home=$(getent passwd "$user" | cut -d: -f6)
	case "$home" in
	/*) ;;
	*) fail "$user has no absolute home directory" ;;
	esac
	# The helper refuses (before the shell changes) a home or ~/.ssh that is a
	# link or not the account's, and an authorized_keys that is a link.
	if [ -n "$check_only" ]; then
		prepare_home "$uid" "$gid" "$home" check
		exit 0
	fi
	prepare_home "$uid" "$gid" "$home"
	add_to_shells
	[ "$current" = "$shell_path" ] || usermod --shell "$shell_path" "$user"
	# Processes the account already runs keep what they can do (rewrite its
	# own authorized_keys, touch its home): converting does not end them.
	if [ "$current" != "$shell_path" ] && pgrep -u "$uid" >/dev/null 2>&1; then
		echo "setup-account.sh: note: $user still runs processes, which keep their access; end them: pkill -KILL -u $user" >&2
	fi
	# The password field is left alone: a lock (`!...`) an admin set stays.
	case "$(getent shadow "$user" | cut -d: -f2)" in
	'!'*) echo "setup-account.sh: note: $user's password is locked ('!'); sshd without PAM (UsePAM no) refuses even key logins to a locked account. If that is not what you want: usermod -p '*' $user" >&2 ;;
	esac
else
	home_base=$(useradd -D | sed -n 's/^HOME=//p')
	home="${home_base:-/home}/$user"
	if [ -e "$home" ] || [ -L "$home" ]; then
		fail "$home already exists but $user does not; remove or rename it first"
	fi
	[ -z "$check_only" ] || exit 0
	add_to_shells
	# '*' in /etc/shadow: no password can match, only keys work (Debian's
	# default '!' would make sshd without PAM refuse even key logins).
	useradd --create-home --home-dir "$home" --shell "$shell_path" --user-group --password '*' "$user"
	prepare_home "$(id -u "$user")" "$(id -g "$user")" "$home"
fi

echo "setup-account.sh: $user is ready; its carrier key lines in $home/.ssh/authorized_keys start with"
echo "  restrict,command=\"$shell_path\""
# The same command again, as the admin ran it: make's target (which says so
# in RUN_BY_MAKE; MAKELEVEL would also be set for a script run from a test
# suite that make started), or this script (the one the server package ships).
if [ "${RUN_BY_MAKE:-}" = 1 ]; then again="make server user=$user key=CARRIER_KEY.pub"; else again="$0 $user CARRIER_KEY.pub"; fi
[ -n "$public_key" ] || echo "  (add one with: $again)"
