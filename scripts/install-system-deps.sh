#!/usr/bin/env bash
# Installs the system packages onionmesh's tests and demo need (Debian/Ubuntu).
# Idempotent: does nothing when everything is already there.
set -euo pipefail
need=()
command -v tor >/dev/null 2>&1 || need+=(tor)
command -v tor-gencert >/dev/null 2>&1 || need+=(tor)
command -v wg >/dev/null 2>&1 || need+=(wireguard-tools)
command -v wireguard-go >/dev/null 2>&1 || need+=(wireguard-go)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
# NFQUEUE delay in the namespace tests: the xtables target (this kernel lacks nft queue)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# systemd-analyze checks the shipped unit (tests/test_systemd_unit.py)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
