#!/usr/bin/env bash
# Builds the llmesh-operator and llmesh-sidecar OCI images from the release binaries, with
# buildah and no base image, and writes them as OCI archives (docs/images.md):
#
#   scripts/build-images.sh [OUT_DIR]        # default OUT_DIR: target/images (git ignores it)
#
# writes OUT_DIR/llmesh-operator-VERSION.oci.tar and OUT_DIR/llmesh-sidecar-VERSION.oci.tar,
# named REGISTRY/llmesh-operator:VERSION and REGISTRY/llmesh-sidecar:VERSION inside the archive
# (the chart's default repositories and tag), and OUT_DIR/images.txt (name, archive, size).
#
# Each image holds the binary (/usr/local/bin/NAME, the entrypoint), the shared libraries and
# dynamic loader `ldd` names for it (none for a static binary), /etc/passwd and /etc/group with
# the user and group 65532 the image runs as, /etc/nsswitch.conf (`hosts: files dns`, so host
# names resolve through /etc/hosts and DNS) and an /etc/hosts for localhost. Nothing else: no
# shell, no CA bundle (TLS roots are compiled in). Files are owned by root, read-only to 65532.
#
# Environment:
#   REGISTRY        image name prefix (default ghcr.io/llmesh)
#   VERSION         image tag (default the workspace version, which is the chart's appVersion)
#   BIN_DIR         take the binaries from here instead of `cargo build --release --locked`
#   SOURCE_DATE_EPOCH  image and file timestamps (default the commit's time): the same binaries
#                   give the same image digests
#   STORAGE_ROOT    buildah storage to build in (default a temporary one, removed at the end)
# Needs buildah (Debian: apt-get install buildah) and root (or `buildah unshare`).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/target/images}
REGISTRY=${REGISTRY:-ghcr.io/llmesh}
UID_GID=65532

die() { echo "build-images: $*" >&2; exit 1; }
command -v buildah >/dev/null || die "buildah is not installed (Debian/Ubuntu: apt-get install buildah)"
command -v ldd >/dev/null || die "ldd is not installed"

# The workspace version ([workspace.package] version in Cargo.toml).
ws_version() {
  awk '/^\[workspace\.package\]/{p=1; next} /^\[/{p=0} p && $1=="version"{gsub(/"/, "", $3); print $3; exit}' "$REPO/Cargo.toml"
}
ws_repository() {
  awk '/^\[workspace\.package\]/{p=1; next} /^\[/{p=0} p && $1=="repository"{gsub(/"/, "", $3); print $3; exit}' "$REPO/Cargo.toml"
}
VERSION=${VERSION:-$(ws_version)}
SOURCE=$(ws_repository)
[[ -n $VERSION && -n $SOURCE ]] || die "cannot read version and repository from Cargo.toml"
REVISION=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}

if [[ -z ${BIN_DIR:-} ]]; then
  (cd "$REPO" && cargo build --release --locked -p llmesh-sidecar -p llmesh-operator)
  BIN_DIR=${CARGO_TARGET_DIR:-$REPO/target}/release
fi

WORK=$(mktemp -d -t llmesh-images-XXXXXX)
own_storage=false
if [[ -z ${STORAGE_ROOT:-} ]]; then
  STORAGE_ROOT=$WORK/storage
  own_storage=true
fi
B=(buildah --root "$STORAGE_ROOT/root" --runroot "$STORAGE_ROOT/run" --storage-driver vfs)
current=""
cleanup() {
  [[ -z $current ]] || "${B[@]}" rm "$current" >/dev/null 2>&1 || true
  if $own_storage; then
    "${B[@]}" rmi --all --force >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"

# The files of one image's root filesystem, in $1.
stage() {
  local root=$1 bin=$2 name
  name=$(basename "$bin")
  install -D -m 0755 "$bin" "$root/usr/local/bin/$name"
  # The binary's shared libraries and its loader, each at the path ldd names (the loader
  # finds them there: the multiarch directories are its default search path). A static
  # binary has none.
  local deps
  deps=$(ldd "$bin" 2>&1 || true)
  if grep -q 'not found' <<<"$deps"; then
    die "$name: a shared library is missing: $deps"
  fi
  if ! grep -Eq 'statically linked|not a dynamic executable' <<<"$deps"; then
    local lib
    for lib in $(grep -Eo '(^|[[:space:]])/[^[:space:]]+' <<<"$deps"); do
      install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
  fi
  mkdir -p "$root/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/nonexistent:/sbin/nologin\n' \
    "$UID_GID" "$UID_GID" >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$UID_GID" >"$root/etc/group"
  # glibc (2.34 and later) has the files and dns NSS modules built in: no libnss_* needed.
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf" "$root/etc/hosts"
  find "$root" -type d -exec chmod 0755 {} +
  find "$root" -exec touch -h -d "@$EPOCH" {} +
}

# build NAME PORT... : one image and its archive.
build() {
  local name=$1
  shift
  local bin=$BIN_DIR/$name
  [[ -x $bin ]] || die "no binary $bin"
  local got
  got=$("$bin" --version) || die "$bin --version failed"
  [[ $got == "$name $VERSION" ]] || die "$bin --version says '$got', expected '$name $VERSION' (set VERSION or rebuild)"
  local root=$WORK/$name-root
  stage "$root" "$bin"

  local c ports=()
  c=$("${B[@]}" from --quiet scratch)
  current=$c
  for p in "$@"; do ports+=(--port "$p/tcp"); done
  "${B[@]}" copy --quiet --chown 0:0 "$c" "$root/" / >/dev/null
  "${B[@]}" config \
    --os linux --arch "$(go_arch)" \
    --user "$UID_GID:$UID_GID" \
    --workingdir / \
    --entrypoint "[\"/usr/local/bin/$name\"]" --cmd '' \
    "${ports[@]}" \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.source=$SOURCE" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    --label "org.opencontainers.image.description=$(description "$name")" \
    "$c"
  local image=$REGISTRY/$name:$VERSION
  "${B[@]}" commit --quiet --format oci --timestamp "$EPOCH" --rm "$c" "$image" >/dev/null
  current=""
  local archive=$OUT/$name-$VERSION.oci.tar
  rm -f "$archive"
  "${B[@]}" push --quiet --format oci "$image" "oci-archive:$archive:$image"
  printf '%s %s %s\n' "$image" "$(basename "$archive")" "$(stat -c %s "$archive")" >>"$OUT/images.txt"
  echo "built $image -> $archive ($(( $(stat -c %s "$archive") / 1024 )) KiB)"
}

description() {
  case $1 in
    llmesh-operator) echo "llmesh operator: reconciles LLMRoute and LLMBudget, configures sidecars, injection webhook" ;;
    llmesh-sidecar) echo "llmesh sidecar: OpenAI- and Anthropic-compatible LLM gateway for one pod" ;;
  esac
}

go_arch() {
  case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) uname -m ;;
  esac
}

rm -f "$OUT/images.txt"
build llmesh-operator 8443 8080
build llmesh-sidecar 4000 4001
