#!/usr/bin/env bash
# Prepare this machine to build and run linux/arm64 images (the tests marked `arm64`,
# tests/image/test_image_arm64.py; docs/image.md, "Multi-arch"). Run after prepare-docker.sh:
#   1. Debian's qemu-user-static, QEMU $QEMU_MIN or newer: user-mode emulation of aarch64,
#      statically linked, so it runs inside any container's root filesystem. Bookworm's own
#      QEMU 7.2 hands an arm64 program the host's x86 /proc/cpuinfo, and onnxruntime's CPU
#      detection (cpuinfo) dies on it with SIGSEGV at `import onnxruntime`; QEMU 10.0 shows an
#      Arm /proc/cpuinfo. On bookworm it therefore comes from Debian's bookworm-backports (this
#      package and its two siblings only: backports upgrade nothing else unless asked);
#   2. binfmt_misc mounted, and the kernel's aarch64 handler registered with the F (fix binary)
#      flag: the kernel opens the emulator when the handler is registered, so arm64 binaries
#      run in containers and chroots that do not contain the emulator. Because the kernel keeps
#      the file it opened, the handler is registered again whenever the package changes;
#   3. an arm64 stand-in for python:3.11-slim, built like prepare-docker.sh's amd64 one
#      (debootstrap --foreign, then the second stage runs under the emulator) and imported as
#      $ARM64_BASE_IMAGE, its config saying linux/arm64/v8. The classic builder (Debian's
#      docker.io 20.10, no buildx) keeps one image per name, so the arm64 base has a name of
#      its own: `docker build --platform linux/arm64 --build-arg BASE_IMAGE=$ARM64_BASE_IMAGE`;
#   4. proof: an arm64 container runs python3 and sees an Arm /proc/cpuinfo.
# Idempotent: each step is skipped when it is already done. Fails loudly on any error.
# CI/test scaffolding only: the product Dockerfile (models/image/) is unchanged by any of it.
set -euo pipefail
# shellcheck source=standin.sh
. "$(dirname "$0")/standin.sh"

STATE_DIR=${SERVEDMODEL_CI_STATE:-/var/lib/servedmodel-ci}
LOG_DIR=${SERVEDMODEL_CI_LOGS:-/var/log/servedmodel-ci}
# tests/image/imagekit.py names the same image (tests/test_repository.py keeps them in step).
ARM64_BASE_IMAGE=${SERVEDMODEL_ARM64_BASE_IMAGE:-servedmodel-ci/python:3.11-slim-arm64}
SUITE=bookworm   # Debian 12: python3 is 3.11, like the upstream python:3.11-slim
# The oldest QEMU this was proven with (7.2 fails, see above).
QEMU_MIN=10.0
# Bump when the recipe of the arm64 stand-in changes, so an old one is rebuilt.
STANDIN_RECIPE=arm64-1
BINFMT_DIR=/proc/sys/fs/binfmt_misc
HANDLER=qemu-aarch64
# The handler as the package ships it for systemd-binfmt: exactly the line the kernel's
# register file takes (name, magic, mask, interpreter, flags).
HANDLER_CONF=/usr/lib/binfmt.d/$HANDLER.conf
# The package version whose emulator the registered handler holds open.
HANDLER_STATE=$STATE_DIR/binfmt-$HANDLER.version

log() { printf '[prepare-arm64] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, mounts binfmt_misc, registers a handler)"
docker info >/dev/null 2>&1 || die "no Docker engine answers: run .ci/prepare-docker.sh first"
mkdir -p "$STATE_DIR" "$LOG_DIR"

# --- 1. packages --------------------------------------------------------------------------
qemu_version() { dpkg-query -W -f '${Version}' qemu-user-static 2>/dev/null || true; }
# "1:10.0.2+ds-2~bpo12+1" >= QEMU_MIN (the epoch aside)
new_enough() { [ -n "$1" ] && [ "$1" != "(none)" ] && dpkg --compare-versions "${1#*:}" ge "$QEMU_MIN"; }
candidate() { apt-cache policy qemu-user-static 2>/dev/null | sed -n 's/^ *Candidate: //p'; }
export DEBIAN_FRONTEND=noninteractive
if new_enough "$(qemu_version)" && [ -f "$HANDLER_CONF" ]; then
    log "qemu-user-static $(qemu_version) already installed"
else
    new_enough "$(candidate)" || apt-get update -q
    release=()
    if ! new_enough "$(candidate)"; then
        if ! grep -rqs -- "$SUITE-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            mirror=$(debian_mirror "$SUITE")
            [ -n "$mirror" ] || die "no Debian $SUITE mirror found in the apt sources"
            log "adding Debian's $SUITE-backports ($mirror): $SUITE's own QEMU is older than $QEMU_MIN"
            printf '%s\n' "# Written by .ci/prepare-arm64.sh: qemu-user-static >= $QEMU_MIN." \
                "Types: deb" "URIs: $mirror" "Suites: $SUITE-backports" "Components: main" \
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
                >"/etc/apt/sources.list.d/servedmodel-ci-$SUITE-backports.sources"
            apt-get update -q
        fi
        release=(-t "$SUITE-backports")
    fi
    log "installing qemu-user-static ${release[*]}"
    apt-get install -y -q "${release[@]}" qemu-user-static
    new_enough "$(qemu_version)" || die "qemu-user-static $(qemu_version) is older than $QEMU_MIN"
    [ -f "$HANDLER_CONF" ] || die "qemu-user-static $(qemu_version) ships no $HANDLER_CONF"
fi
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get install -y -q debootstrap debian-archive-keyring
fi

# --- 2. binfmt_misc ------------------------------------------------------------------------
if [ -e "$BINFMT_DIR/register" ]; then
    log "binfmt_misc already mounted"
else
    log "mounting binfmt_misc on $BINFMT_DIR"
    mount -t binfmt_misc binfmt_misc "$BINFMT_DIR" || die "cannot mount binfmt_misc (a container without privileges?)"
fi
[ "$(cat "$BINFMT_DIR/status")" = enabled ] || die "binfmt_misc is disabled ($BINFMT_DIR/status)"

# --- 3. the aarch64 handler, with F -------------------------------------------------------
handler_active() {
    local entry=$BINFMT_DIR/$HANDLER
    [ -e "$entry" ] && grep -qx enabled "$entry" \
        && grep -q '^flags: .*F' "$entry" \
        && [ -e "$(sed -n 's/^interpreter //p' "$entry")" ]
}
if handler_active && [ "$(cat "$HANDLER_STATE" 2>/dev/null)" = "$(qemu_version)" ]; then
    log "aarch64 handler already registered for qemu-user-static $(qemu_version): $(grep -E '^(interpreter|flags)' "$BINFMT_DIR/$HANDLER" | tr '\n' ' ')"
else
    if [ -e "$BINFMT_DIR/$HANDLER" ]; then
        # Disabled, without F (an arm64 container then fails with "exec format error"), or
        # holding the emulator of another package version (F opened it once): register again.
        log "replacing the registered $HANDLER handler (disabled, no F flag, or another qemu)"
        echo -1 >"$BINFMT_DIR/$HANDLER"
    fi
    line=$(grep -v '^#' "$HANDLER_CONF" | grep "^:$HANDLER:" | head -n1)
    [ -n "$line" ] || die "no :$HANDLER: line in $HANDLER_CONF"
    case "${line##*:}" in *F*) ;; *) line="${line}F" ;; esac
    log "registering the aarch64 handler (flags ${line##*:}) from $HANDLER_CONF"
    printf '%s' "$line" >"$BINFMT_DIR/register" || die "the kernel refused the $HANDLER handler"
    handler_active || die "the $HANDLER handler is not active after registering it"
    qemu_version >"$HANDLER_STATE"
fi

# --- 4. the arm64 stand-in base image -------------------------------------------------------
arch=$(docker image inspect --format '{{.Architecture}}' "$ARM64_BASE_IMAGE" 2>/dev/null || true)
current=$(docker image inspect --format "{{ index .Config.Labels \"$STANDIN_LABEL\" }}" "$ARM64_BASE_IMAGE" 2>/dev/null || true)
if [ -n "$arch" ] && [ -z "$current" ]; then
    [ "$arch" = arm64 ] || die "$ARM64_BASE_IMAGE exists, is not a stand-in and is for $arch, not arm64"
    log "$ARM64_BASE_IMAGE exists and is not a stand-in (a real arm64 python:3.11-slim?): leaving it"
elif [ "$current" = "$STANDIN_RECIPE" ] && [ "$arch" = arm64 ]; then
    log "stand-in $ARM64_BASE_IMAGE (recipe $STANDIN_RECIPE) already present"
else
    mirror=$(debian_mirror "$SUITE")
    [ -n "$mirror" ] || die "no Debian $SUITE mirror found in the apt sources"
    rootfs=$(mktemp -d /var/tmp/servedmodel-standin-arm64.XXXXXX)
    # The second stage mounts /proc and /sys inside the root; never leave them mounted.
    cleanup() {
        local m
        for m in $(awk -v r="$rootfs" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
            umount -l "$m" 2>/dev/null || true
        done
        rm -rf --one-file-system "$rootfs"
    }
    trap cleanup EXIT
    log "building stand-in $ARM64_BASE_IMAGE: debootstrap --arch=arm64 --foreign (log: $LOG_DIR/debootstrap-arm64.log)"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$LOG_DIR/debootstrap-arm64.log" 2>&1 \
        || { tail -n 30 "$LOG_DIR/debootstrap-arm64.log" >&2; die "debootstrap (first stage) failed"; }
    # The first arm64 binary this machine runs: fails here, clearly, if emulation does not work.
    chroot "$rootfs" /bin/true || die "cannot run an arm64 binary (the $HANDLER handler does not work)"
    log "second stage under qemu (emulated: a few minutes)"
    chroot "$rootfs" /debootstrap/debootstrap --second-stage >>"$LOG_DIR/debootstrap-arm64.log" 2>&1 \
        || { tail -n 30 "$LOG_DIR/debootstrap-arm64.log" >&2; die "debootstrap (second stage, under qemu) failed"; }
    standin_import "$rootfs" "$ARM64_BASE_IMAGE" "$STANDIN_RECIPE"
    cleanup
    trap - EXIT
    standin_set_platform "$ARM64_BASE_IMAGE" linux/arm64/v8
    arch=$(docker image inspect --format '{{.Os}}/{{.Architecture}}' "$ARM64_BASE_IMAGE")
    [ "$arch" = linux/arm64 ] || die "$ARM64_BASE_IMAGE says $arch, not linux/arm64"
    log "stand-in $ARM64_BASE_IMAGE built"
fi

# --- 5. proof: an arm64 container runs and sees an Arm CPU ------------------------------------
machine=$(docker run --rm --network host --platform linux/arm64 "$ARM64_BASE_IMAGE" python3 -c '
import platform, sys
cpu = open("/proc/cpuinfo").read()
print(platform.machine(), sys.version.split()[0], "arm-cpuinfo" if "CPU implementer" in cpu else "host-cpuinfo")') \
    || die "an arm64 container does not run (see above)"
case "$machine" in
"aarch64 "*" arm-cpuinfo") ;;
*) die "the arm64 container reports '$machine', not aarch64 with an Arm /proc/cpuinfo" ;;
esac
log "ready: linux/arm64 containers run under qemu $(qemu_version) ($machine), base $ARM64_BASE_IMAGE"
