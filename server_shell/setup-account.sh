#!/bin/sh
# setup-account.sh USER — make USER a qbackup storage account (idempotent).
# Run as root by `make server user=USER [force=1]` with SHELL_PATH=/usr/sbin/qbackup-shell:
#   - SHELL_PATH is listed in /etc/shells;
#   - USER exists (created with a 0700 home if missing) and has SHELL_PATH as
#     login shell;
#   - key logins work without a password ('*' in /etc/shadow, not locked '!');
#   - ~/.ssh/authorized_keys exists (0600, owned by USER) and shows the
#     `restrict` line to paste the carrier VM's key after.
set -eu

user=${1:-}
shell_path=${SHELL_PATH:-/usr/sbin/qbackup-shell}

fail() {
	echo "setup-account.sh: $*" >&2
	exit 1
}

# The name goes into useradd/usermod arguments: accept only what useradd's
# own default policy accepts, so nothing here can be read as an option.
case "$user" in
'' | -* | *[!a-z0-9_-]*) fail "usage: setup-account.sh USER (lowercase letters, digits, _ and -)" ;;
esac
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -x "$shell_path" ] || fail "$shell_path is missing; run make server-files first"

# Root is about to chown/chmod things inside a directory the account owns:
# a symlink planted there could turn that into chown of /etc/shadow. Refuse.
refuse_symlinks() {
	for path in "$1" "$1/.ssh" "$1/.ssh/authorized_keys"; do
		[ ! -L "$path" ] || fail "$path is a symbolic link; remove it and run again"
	done
}

# Every refusal comes before the first change: a refused run changes nothing.
existing=no
if id -u "$user" >/dev/null 2>&1; then
	existing=yes
	# Converting an existing account takes its shell away and chowns its home:
	# never do that to a system account (root, daemon, www-data, ...), and do it
	# to a person's account only when asked to explicitly (FORCE=1).
	uid=$(id -u "$user")
	uid_min=$(awk '$1 == "UID_MIN" { print $2 }' /etc/login.defs 2>/dev/null)
	uid_max=$(awk '$1 == "UID_MAX" { print $2 }' /etc/login.defs 2>/dev/null)
	if [ "$uid" -lt "${uid_min:-1000}" ] || [ "$uid" -gt "${uid_max:-60000}" ]; then
		fail "$user is a system account (uid $uid outside ${uid_min:-1000}..${uid_max:-60000}); choose another name"
	fi
	current=$(getent passwd "$user" | cut -d: -f7)
	case "$current" in
	"$shell_path" | */nologin | */false) ;;
	*) [ "${FORCE:-}" = 1 ] || fail "$user exists with login shell $current; to turn it into a backup-only account run again with force=1" ;;
	esac
	refuse_symlinks "$(getent passwd "$user" | cut -d: -f6)"
fi

if ! grep -qxF "$shell_path" /etc/shells; then
	echo "$shell_path" >>/etc/shells
fi
if [ "$existing" = yes ]; then
	usermod --shell "$shell_path" "$user"
else
	useradd --create-home --shell "$shell_path" --user-group "$user"
fi

# Debian's useradd locks the password with '!'; OpenSSH without PAM refuses
# even key logins for a locked account. '*' means "no password can match":
# only keys work.
password=$(getent shadow "$user" | cut -d: -f2)
case "$password" in
'!'* | '') usermod --password '*' "$user" ;;
esac

home=$(getent passwd "$user" | cut -d: -f6)
group=$(id -gn "$user")
case "$home" in
/*) ;;
*) fail "$user has no absolute home directory" ;;
esac

refuse_symlinks "$home"

install -d -m 0700 -o "$user" -g "$group" "$home"
install -d -m 0700 -o "$user" -g "$group" "$home/.ssh"
keys="$home/.ssh/authorized_keys"
if [ ! -e "$keys" ]; then
	cat >"$keys" <<'TEXT'
# qbackup storage account: one line per carrier VM key, each starting with
# `restrict` (no shell, no pty, no forwarding of any kind), for example:
# restrict ssh-ed25519 AAAAC3Nza...key... qbackup-carrier@my-qube
TEXT
fi
chown -h "$user:$group" "$keys"
chmod 0600 "$keys"
echo "setup-account.sh: $user is ready; add the carrier's key to $keys"
