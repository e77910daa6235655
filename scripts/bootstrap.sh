#!/usr/bin/env bash
# Installs everything the stack and the tests need on a fresh Debian/Ubuntu machine:
# a virtual environment with the project and its dev tools, and the mosquitto and influxdb
# Debian packages when their binaries are missing. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# apt_install [apt-get install options] PACKAGE...: quietly, without recommends.
apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_servers=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_servers+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need_servers+=(influxdb)
if [ ${#need_servers[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian packages: ${need_servers[*]} mosquitto-clients" >&2
    apt_install "${need_servers[@]}" mosquitto-clients
  else
    echo "bootstrap: ${need_servers[*]} missing and apt-get is not available." >&2
    echo "  Install Mosquitto 2.x and InfluxDB (1.x or 2.x) yourself, or run the stack with" >&2
    echo "  'docker compose up' (see README)." >&2
    exit 1
  fi
fi

# Mosquitto >= 2.0.13: Debian 12's own 2.0.11 stops enforcing a client's MQTT 5 Receive Maximum
# once acknowledgements flow (eclipse/mosquitto#2306, fixed in 2.0.13), so the bridge's bound on
# unacknowledged messages would not hold. On Debian 12, take 2.0.21 from bookworm-backports.
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
mosquitto_version=$("$mosquitto_bin" -h 2>/dev/null | sed -n 's/^mosquitto version \([0-9.]*\).*/\1/p' | head -n 1 || true)
if [ -n "$mosquitto_version" ] &&
  [ "$(printf '%s\n2.0.13\n' "$mosquitto_version" | sort -V | head -n 1)" != "2.0.13" ]; then
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = "bookworm" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: mosquitto $mosquitto_version < 2.0.13: installing it from bookworm-backports" >&2
    backports=/etc/apt/sources.list.d/bookworm-backports.sources
    if [ ! -f "$backports" ]; then
      printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
        "Suites: bookworm-backports" "Components: main" \
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" | $SUDO tee "$backports" >/dev/null
    fi
    apt_install -t bookworm-backports mosquitto mosquitto-clients
  else
    echo "bootstrap: mosquitto $mosquitto_version < 2.0.13 does not enforce a client's Receive" >&2
    echo "  Maximum; install 2.0.13 or newer (the test that checks it is marked xfail meanwhile)." >&2
  fi
fi

# Headless Chromium for the fleet page's browser test (tests/integration/query_api/test_fleet_page.py);
# without it that test is skipped with the reason.
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian package: chromium" >&2
    apt_install chromium
  else
    echo "bootstrap: chromium missing and apt-get is not available: the browser test of" >&2
    echo "  the fleet page will be skipped (install Chromium to run it)." >&2
  fi
fi

# promtool and Alertmanager for the alerting rules' tests (tests/unit/deploy/test_alert_rules.py,
# tests/integration/deploy/test_alert_delivery.py); without them those tests are skipped with the
# reason. The packages' services are not started here (their units stay disabled): the tests
# start their own prometheus and alertmanager processes on free ports.
need_alerting=()
command -v promtool >/dev/null 2>&1 || need_alerting+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need_alerting+=(prometheus-alertmanager)
if [ ${#need_alerting[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian packages: ${need_alerting[*]}" >&2
    apt_install "${need_alerting[@]}"
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now prometheus prometheus-alertmanager \
        prometheus-node-exporter >/dev/null 2>&1 || true
    fi
  else
    echo "bootstrap: ${need_alerting[*]} missing and apt-get is not available: the alerting" >&2
    echo "  rules' tests will be skipped (install promtool and Alertmanager to run them)." >&2
  fi
fi

# debootstrap, systemd-analyze, systemd-nspawn and lintian for the Debian package's tests
# (tests/integration/package/: lintian, `systemd-analyze verify` on its unit, an install into a
# clean debootstrap'd root, the unit booted under systemd in a container); without
# them those tests are skipped with the reason. The systemd package is not started here.
need_packaging=()
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need_packaging+=(debootstrap)
command -v systemd-analyze >/dev/null 2>&1 || need_packaging+=(systemd)
command -v lintian >/dev/null 2>&1 || need_packaging+=(lintian)
command -v systemd-nspawn >/dev/null 2>&1 || need_packaging+=(systemd-container)
if [ ${#need_packaging[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian packages: ${need_packaging[*]}" >&2
    apt_install "${need_packaging[@]}"
  else
    echo "bootstrap: ${need_packaging[*]} missing and apt-get is not available: the Debian" >&2
    echo "  package's tests will be skipped (install debootstrap, systemd, systemd-container, lintian)." >&2
  fi
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
