# Sourced by scripts/serve and scripts/test: installs what criproxy needs, idempotently.
# Debian 12 packages (only those missing), then the virtualenv (only when pyproject changed).
set -euo pipefail

CRIPROXY_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$CRIPROXY_SRC/.venv"

if [ "$(id -u)" != 0 ]; then
  echo "criproxy: run this as root (it installs packages and runs containers)" >&2
  exit 1
fi

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || true
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

apt_install containerd runc crun containernetworking-plugins docker-registry busybox-static \
  iptables iproute2 openssl python3-venv ${CRIPROXY_EXTRA_PACKAGES:-}

stamp="$VENV/.criproxy-installed"
want=$(sha256sum "$CRIPROXY_SRC/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up the virtualenv in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e "$CRIPROXY_SRC[dev]"
  echo "$want" > "$stamp"
fi
