#!/usr/bin/env bash
# Install Safe Passage on a fresh Debian 12 host, once, as root:
#   deploy/install-debian12.sh --org "12345 12345 ... 12345" [--postgresql] [--dry-run]
# It installs tor and Python, creates the safepassage user and the
# safepassage-tor group, installs the software into /opt/safepassage/venv, the
# tor configuration into /etc/safepassage, the hardened systemd units, and
# initialises /var/lib/safepassage/server (keys, database) publishing through
# tor's control socket. Then it prints what to do next (docs/operating.md).
# --dry-run prints every command instead of running it.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
ORG=""
POSTGRES=0
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --org) ORG="${2:-}"; shift 2 ;;
    --postgresql) POSTGRES=1; shift ;;
    --dry-run) DRY=1; shift ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$ORG" ]; then
  echo "error: --org is required (the organisation fingerprint the admins published out of band)" >&2
  exit 2
fi

run() {
  if [ "$DRY" -eq 1 ]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

if [ "$DRY" -eq 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "error: run as root" >&2; exit 1; }
  . /etc/os-release
  [ "${ID:-}" = debian ] && [ "${VERSION_ID:-}" = 12 ] || { echo "error: this script is for Debian 12" >&2; exit 1; }
fi

DATA=/var/lib/safepassage/server
VENV=/opt/safepassage/venv
packages=(tor python3 python3-venv)
[ "$POSTGRES" -eq 1 ] && packages+=(postgresql)

run apt-get update -qq
run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
# Debian's own tor instance would be a second, unhardened tor: ours replaces it.
run systemctl disable --now tor.service
run groupadd --system --force safepassage-tor
if ! id safepassage >/dev/null 2>&1 || [ "$DRY" -eq 1 ]; then
  run useradd --system --home-dir /var/lib/safepassage --no-create-home --shell /usr/sbin/nologin \
    --groups safepassage-tor safepassage
fi

run install -d -m 0755 /opt/safepassage
run python3 -m venv "$VENV"
run "$VENV/bin/pip" install --quiet "$SRC"
run cp -r "$SRC/docs" /opt/safepassage/docs

run install -d -m 0755 /etc/safepassage /etc/safepassage/tor.d /etc/safepassage/tor.d.examples
run install -m 0644 "$SRC/deploy/tor/torrc" /etc/safepassage/torrc
for f in public.conf staff.conf integration.conf; do
  run install -m 0644 "$SRC/deploy/tor/$f" "/etc/safepassage/tor.d.examples/$f"
done
run install -m 0644 "$SRC/deploy/onionbalance/frontend.conf" /etc/safepassage/tor.d.examples/frontend.conf
for unit in safepassage-tor safepassage-intake safepassage-staff safepassage-integration; do
  run install -m 0644 "$SRC/deploy/systemd/$unit.service" "/etc/systemd/system/$unit.service"
done
run systemctl daemon-reload
run systemctl enable --now safepassage-tor.service

run install -d -m 0700 -o safepassage -g safepassage /var/lib/safepassage
run runuser -u safepassage -- "$VENV/bin/safepassage" server init --data "$DATA" --org "$ORG"
run runuser -u safepassage -- "$VENV/bin/safepassage" staff init --data "$DATA"
# Publish through tor's control socket (server/tor.py); the onion keys go to DATA/keys.
if [ "$DRY" -eq 1 ]; then
  printf '+ append tor_control = "unix:/run/safepassage-tor/control" to %s/config.toml\n' "$DATA"
else
  echo 'tor_control = "unix:/run/safepassage-tor/control"' >> "$DATA/config.toml"
fi
run systemctl enable --now safepassage-intake.service safepassage-staff.service

cat <<TXT
Installed. Next (docs/operating.md):
  1. Read the onion addresses:   journalctl -u safepassage-intake -u safepassage-staff | grep published
     and the keys: $DATA/keys/onion-public.key, onion-staff.key (back them up now).
  2. Enrol the first admin:      runuser -u safepassage -- $VENV/bin/safepassage staff invite \\
                                   --data $DATA --user <name> --role admin --onion-key <their key>
  3. The admins sign a directory naming the receipt key and the onions, then:
                                 safepassage server publish --data $DATA DIRECTORY HEAD
TXT
