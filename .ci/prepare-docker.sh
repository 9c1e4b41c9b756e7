#!/usr/bin/env bash
# Prepare this machine for the image tests (tests/image/, marker `docker`) and bench/image.py:
#   1. a Docker engine (Debian's docker.io), started by hand: no systemd here, no bridge, no
#      iptables, so containers use --network host and nothing leaves 127.0.0.1;
#   2. a real registry (Debian's docker-registry) listening on 127.0.0.1:5000, no auth;
#   3. a stand-in for the Dockerfile's upstream base image (python:3.11-slim), built from
#      Debian packages with debootstrap, because no public registry can be reached here.
# Idempotent: each step is skipped when it is already done. Fails loudly on any error.
# CI/test scaffolding only: the product Dockerfile (models/image/) is unchanged by any of it.
set -euo pipefail
# shellcheck source=standin.sh
. "$(dirname "$0")/standin.sh"

STATE_DIR=${SERVEDMODEL_CI_STATE:-/var/lib/servedmodel-ci}
LOG_DIR=${SERVEDMODEL_CI_LOGS:-/var/log/servedmodel-ci}
REGISTRY_ADDR=127.0.0.1:5000
BASE_IMAGE=${SERVEDMODEL_BASE_IMAGE:-python:3.11-slim}
SUITE=bookworm   # Debian 12: python3 is 3.11, like the upstream python:3.11-slim
# Bump when the recipe of the stand-in changes, so an old stand-in is rebuilt.
STANDIN_RECIPE=3

log() { printf '[prepare-docker] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts dockerd)"
mkdir -p "$STATE_DIR" "$LOG_DIR"

# --- 1. packages --------------------------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v docker-registry >/dev/null || need_pkgs+=(docker-registry)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # With recommends, as tested; debootstrap needs the archive keyring to verify the mirror.
    apt-get install -y -q "${need_pkgs[@]}" ca-certificates debian-archive-keyring
fi
command -v docker >/dev/null || die "no docker client after installing docker.io"

# --- 2. the Docker engine ------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    log "Docker engine already running"
else
    log "starting dockerd (no bridge, no iptables; log: $LOG_DIR/dockerd.log)"
    # setsid + nohup: the daemon outlives this script and the CI step that ran it.
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false \
        >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -n 30 "$LOG_DIR/dockerd.log" >&2; die "dockerd did not start in 60 s"; }
    log "Docker engine is up"
fi

# --- 3. the registry on 127.0.0.1:5000 -------------------------------------------------------
registry_up() { curl -fsS -o /dev/null --max-time 2 "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }
if registry_up; then
    log "registry already answering on $REGISTRY_ADDR"
else
    cat >"$STATE_DIR/registry.yml" <<EOF
# Written by .ci/prepare-docker.sh: a local registry for tests, loopback only, no auth.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE_DIR/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
    mkdir -p "$STATE_DIR/registry"
    log "starting docker-registry on $REGISTRY_ADDR (log: $LOG_DIR/registry.log)"
    setsid nohup docker-registry serve "$STATE_DIR/registry.yml" \
        >>"$LOG_DIR/registry.log" 2>&1 </dev/null &
    for _ in $(seq 1 30); do registry_up && break; sleep 1; done
    registry_up || { tail -n 30 "$LOG_DIR/registry.log" >&2; die "registry did not answer on $REGISTRY_ADDR"; }
    log "registry is up"
fi

# --- 4. the stand-in base image ------------------------------------------------------------
current=$(docker image inspect --format "{{ index .Config.Labels \"$STANDIN_LABEL\" }}" "$BASE_IMAGE" 2>/dev/null || true)
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && [ -z "$current" ]; then
    log "$BASE_IMAGE exists and is not a stand-in (the real upstream image?): leaving it"
elif [ "$current" = "$STANDIN_RECIPE" ]; then
    log "stand-in $BASE_IMAGE (recipe $STANDIN_RECIPE) already present"
else
    mirror=$(debian_mirror "$SUITE")
    [ -n "$mirror" ] || die "no Debian $SUITE mirror found in the apt sources"
    log "building stand-in $BASE_IMAGE from Debian $SUITE packages (debootstrap minbase)"
    rootfs=$(mktemp -d /var/tmp/servedmodel-standin.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$LOG_DIR/debootstrap.log" 2>&1 \
        || { tail -n 30 "$LOG_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
    standin_import "$rootfs" "$BASE_IMAGE" "$STANDIN_RECIPE"
    rm -rf "$rootfs"
    trap - EXIT
    log "stand-in $BASE_IMAGE built: $(docker run --rm --network host "$BASE_IMAGE" python3 --version)"
fi

log "ready: engine $(docker version --format '{{.Server.Version}}'), registry $REGISTRY_ADDR, base $BASE_IMAGE"
