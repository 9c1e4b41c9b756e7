#!/usr/bin/env bash
# Prepare this machine for the monitoring tests (tests/monitoring/): Debian's `prometheus`
# package gives a real Prometheus server and `promtool`. The tests start their own Prometheus
# on 127.0.0.1 (free port, temporary data directory); the package's own service is not used,
# so it is kept from starting where this script installs the package.
# Idempotent: nothing is done when both binaries are already on PATH. Fails loudly on any error.
set -euo pipefail

log() { printf '[prepare-prometheus] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    log "already installed: $(prometheus --version 2>&1 | head -n1)"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (installs Debian's prometheus package)"

export DEBIAN_FRONTEND=noninteractive
# Keep the package's init script from starting a Prometheus on :9090 (invoke-rc.d honours a
# policy-rc.d that exits 101); only when the machine has no policy of its own.
own_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
fi
cleanup() { [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT

log "installing prometheus (server and promtool)"
apt-get update -q
# Without recommends: prometheus-node-exporter is not needed by the tests.
apt-get install -y -q --no-install-recommends prometheus

command -v prometheus >/dev/null || die "no prometheus binary after installing the package"
command -v promtool >/dev/null || die "no promtool binary after installing the package"
log "ready: $(prometheus --version 2>&1 | head -n1)"
