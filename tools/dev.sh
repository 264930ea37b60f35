#!/usr/bin/env bash
# Set up everything hwflow needs on a Debian machine (as root), then run the
# demo or the tests. Idempotent: a second run installs nothing new.
#
#   bash tools/dev.sh demo [hwflow demo options]   single-host demo
#   bash tools/dev.sh test [pytest options]        the whole test suite
#   bash tools/dev.sh setup                        only set up (.venv/)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3 python3-venv python3-dev gcc libudev1 iproute2 iputils-ping ethtool
              openvswitch-switch strace etcd-server busybox)

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

setup() {
    if [ "$(id -u)" != 0 ]; then
        echo "tools/dev.sh: run as root: it installs Debian packages and the demo/tests create network namespaces" >&2
        exit 1
    fi
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "creating the virtualenv .venv" >&2
        python3 -m venv .venv
    fi
    # Reinstall when the package's build inputs changed (setup.py, the native builders and C sources).
    if ! .venv/bin/python -c "import hwflow, pytest, hypothesis, openstack, neutron_lib" 2>/dev/null \
            || [ ! -e .venv/.hwflow-installed ] \
            || [ -n "$(find setup.py pyproject.toml native -newer .venv/.hwflow-installed 2>/dev/null)" ]; then
        echo "installing hwflow and its Python dependencies into .venv" >&2
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -e '.[test,neutron]'
        touch .venv/.hwflow-installed
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo) setup; exec .venv/bin/hwflow demo "$@" ;;
    test) setup; exec .venv/bin/python -m pytest "$@" ;;
    setup) setup ;;
    *) usage ;;
esac
