# Sourced by prepare-docker.sh (linux/amd64) and prepare-arm64.sh (linux/arm64): what both
# stand-ins for python:3.11-slim share, so the two recipes cannot drift apart.
#   debian_mirror SUITE                         the machine's Debian mirror for SUITE
#   standin_import ROOTFS IMAGE RECIPE          finish a debootstrapped root, import it
#   standin_set_platform IMAGE PLATFORM         make the image say PLATFORM (e.g. linux/arm64/v8)
# Needs log() and die() from the caller.

STANDIN_LABEL=org.servedmodel.ci.standin

# The machine's Debian mirror, read from its apt sources (one-line or deb822 format); the
# first URI that serves SUITE of the main archive. A file without it is no error (`|| true`:
# under pipefail, grep's "nothing selected" would otherwise end the caller).
debian_mirror() {
    local suite=$1
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    local f
    for f in "${files[@]}"; do
        [ -f "$f" ] || continue
        case "$f" in
        *.sources)
            awk -v suite="$suite" '
                /^[[:space:]]*$/ { if (uri != "" && suites ~ ("(^| )" suite "( |$)")) { print uri; exit } uri=""; suites=""; next }
                tolower($1) == "uris:" { uri=$2 }
                tolower($1) == "suites:" { $1=""; suites=$0; sub(/^ +/, "", suites) }
                END { if (uri != "" && suites ~ ("(^| )" suite "( |$)")) print uri }
            ' "$f" | grep -v -- '-security' | head -n1 || true
            ;;
        *)
            awk -v suite="$suite" '$1 == "deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == suite) { print $i; exit } }' "$f" \
                | grep -v -- '-security' | head -n1 || true
            ;;
        esac
    done | head -n1
}

# Turn a debootstrapped root filesystem into the stand-in image IMAGE, labelled
# $STANDIN_LABEL=RECIPE. The image says the engine's own platform (see standin_set_platform).
standin_import() {
    local rootfs=$1 image=$2 recipe=$3
    # Trust what this machine trusts, so pip inside a build reaches the package index.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    # python:3.11-slim has `python`/`python3` in /usr/local/bin; offer the same names.
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    # Like the upstream slim image: no apt lists, caches, docs or man pages.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" \
        --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
        --change "LABEL $STANDIN_LABEL=$recipe" \
        --change 'CMD ["python3"]' \
        - "$image" >/dev/null
}

# Record PLATFORM's architecture (and variant) in IMAGE's config. `docker import --platform`
# is ignored by Debian's docker.io 20.10 daemon (tried: the imported image still
# says amd64), and `docker build --platform linux/arm64` would refuse it as a base. So the image
# goes out with `docker save`, its config is rewritten (architecture, variant; the config's
# name is its sha256, the image id) and it comes back with `docker load`.
standin_set_platform() {
    local image=$1 platform=$2 work
    work=$(mktemp -d /var/tmp/servedmodel-standin-save.XXXXXX)
    docker save "$image" | tar -x -C "$work"
    python3 - "$work" "$platform" <<'PY'
import hashlib, json, os, sys
work, platform = sys.argv[1], sys.argv[2]
os_name, arch, *variant = platform.split("/")
with open(os.path.join(work, "manifest.json")) as f:
    manifest = json.load(f)
assert len(manifest) == 1, manifest
old = manifest[0]["Config"]
with open(os.path.join(work, old)) as f:
    config = json.load(f)
config["os"], config["architecture"] = os_name, arch
config.pop("variant", None)
if variant:
    config["variant"] = variant[0]
data = json.dumps(config, separators=(",", ":")).encode()
new = hashlib.sha256(data).hexdigest() + ".json"
with open(os.path.join(work, new), "wb") as f:
    f.write(data)
if new != old:
    os.remove(os.path.join(work, old))
manifest[0]["Config"] = new
with open(os.path.join(work, "manifest.json"), "w") as f:
    json.dump(manifest, f)
PY
    # The amd64-labelled image goes first: the loaded one takes over its name.
    docker rmi "$image" >/dev/null
    tar -C "$work" -c . | docker load >/dev/null
    rm -rf "$work"
}
