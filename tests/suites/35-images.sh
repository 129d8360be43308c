#!/usr/bin/env bash
# The container images, built as a user builds them and run as a cluster runs them:
#   - scripts/build-images.sh builds the release binaries and both images (buildah, vfs storage,
#     no base image) into OCI archives; their names must be the chart's default repositories at
#     its appVersion;
#   - tests/images/check_archive.py reads each archive: user 65532, entrypoint, OCI labels, and a
#     single layer holding exactly the binary, the libraries and loader `ldd` names for it, and
#     four /etc files, all owned by root; it prints the sizes (docs/images.md keeps them);
#   - a second build from the same binaries gives the same image digests;
#   - skopeo copies both archives to a registry (Debian's docker-registry on loopback), which
#     serves the archives' manifest digests; podman load names them as the chart does;
#   - in a throwaway buildah storage, a container from the operator's archive and one from the
#     sidecar pulled back from the registry run `--version` (buildah run --isolation chroot,
#     which shares the host's network namespace);
#   - the operator starts inside its image and stops at the missing Kubernetes credentials;
#   - the sidecar serves standalone inside its image, as user 65532, with a route on the built-in
#     mock provider and two on a fake provider on the host, reached by host names that only the
#     image's /etc/hosts knows (`localhost`, as shipped, and a name added to the container's copy):
#     glibc's NSS `files` lookup works in the image. curl on the host calls all three.
# Installs buildah, skopeo, podman and docker-registry (Debian packages) when missing; starts no service. Adds the release build to the suite's time
# (most of it, cold); the images themselves take seconds.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
ok() { printf '  ok   %s\n' "$*"; }
fail() { printf '  FAIL %s\n' "$*" >&2; exit 1; }

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v podman >/dev/null || missing+=(podman)
command -v docker-registry >/dev/null || missing+=(docker-registry)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # policy-rc.d: the docker-registry package must not start (or leave running) a system registry.
  own_policy=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=true
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
  $own_policy && rm -f /usr/sbin/policy-rc.d
fi
if [[ ! -x "$TARGET/debug/llmesh-fake-provider" ]]; then
  (cd "$REPO" && cargo build -q --locked -p llmesh-fakes --bin llmesh-fake-provider)
fi

WORK=$(mktemp -d -t llmesh-images-test-XXXXXX)
B=(buildah --root "$WORK/storage/root" --runroot "$WORK/storage/run" --storage-driver vfs)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "${B[@]}" rm --all >/dev/null 2>&1 || true
  "${B[@]}" rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- build -----------------------------------------------------------------------------------
t0=$(date +%s)
(cd "$REPO" && scripts/build-images.sh "$WORK/images") >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; fail "scripts/build-images.sh"; }
ok "scripts/build-images.sh: $(grep -c '^built ' "$WORK/build.log") images in $(( $(date +%s) - t0 ))s (release build included)"
BIN=$TARGET/release

read -r VERSION SOURCE OP_REF SC_REF < <(python3 - "$REPO" <<'PY'
import sys, tomllib, yaml
repo = sys.argv[1]
ws = tomllib.load(open(f"{repo}/Cargo.toml", "rb"))["workspace"]["package"]
chart = yaml.safe_load(open(f"{repo}/charts/llmesh/Chart.yaml"))
values = yaml.safe_load(open(f"{repo}/charts/llmesh/values.yaml"))
assert chart["appVersion"] == ws["version"], (chart["appVersion"], ws["version"])
tag = chart["appVersion"]
print(ws["version"], ws["repository"],
      f"{values['operator']['image']['repository']}:{values['operator']['image']['tag'] or tag}",
      f"{values['sidecar']['image']['repository']}:{values['sidecar']['image']['tag'] or tag}")
PY
)
[[ -n ${SC_REF:-} ]] || fail "cannot read the version and image names from Cargo.toml and the chart"
REVISION=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
OP_TAR=$WORK/images/llmesh-operator-$VERSION.oci.tar
SC_TAR=$WORK/images/llmesh-sidecar-$VERSION.oci.tar
grep -qx "$OP_REF llmesh-operator-$VERSION.oci.tar [0-9]*" "$WORK/images/images.txt" || fail "images.txt does not name $OP_REF: $(cat "$WORK/images/images.txt")"
grep -qx "$SC_REF llmesh-sidecar-$VERSION.oci.tar [0-9]*" "$WORK/images/images.txt" || fail "images.txt does not name $SC_REF: $(cat "$WORK/images/images.txt")"
ok "the archives are named as the chart's defaults: $OP_REF, $SC_REF"

check_archive() {
  local tar=$1 ref=$2 name=$3
  python3 "$REPO/tests/images/check_archive.py" "$tar" --ref "$ref" --binary "$BIN/$name" \
    --version "$VERSION" --revision "$REVISION" --source "$SOURCE" >"$WORK/check-$name.out" || fail "$name archive"
  ok "$name archive: user 65532, entrypoint, labels, only the binary, its libraries and /etc files"
  sed 's/^/       /' "$WORK/check-$name.out"
}
check_archive "$OP_TAR" "$OP_REF" llmesh-operator
check_archive "$SC_TAR" "$SC_REF" llmesh-sidecar

# The same binaries and commit give the same images.
manifest_digest() { python3 -c 'import json, sys, tarfile; print(json.load(tarfile.open(sys.argv[1]).extractfile("index.json"))["manifests"][0]["digest"])' "$1"; }
(cd "$REPO" && BIN_DIR=$BIN scripts/build-images.sh "$WORK/images2") >"$WORK/build2.log" 2>&1 || { cat "$WORK/build2.log"; fail "second build"; }
for name in llmesh-operator llmesh-sidecar; do
  d1=$(manifest_digest "$WORK/images/$name-$VERSION.oci.tar")
  d2=$(manifest_digest "$WORK/images2/$name-$VERSION.oci.tar")
  [[ $d1 == "$d2" ]] || fail "$name: two builds from the same binaries differ ($d1, $d2)"
done
ok "a second build gives the same manifest digests"

# --- push and pull ---------------------------------------------------------------------------
# As docs/images.md tells users: skopeo copy from the archive to a registry (Debian's
# docker-registry, on loopback, storage in $WORK). The registry must serve the archive's manifest
# digest, and buildah pulls the sidecar back from it for the run below.
REG_PORT=$(free_port)
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$REG_PORT}
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$REG_PORT/v2/" >/dev/null || fail "the registry did not start: $(cat "$WORK/registry.log")"
REG=127.0.0.1:$REG_PORT/llmesh
for name in llmesh-operator llmesh-sidecar; do
  tar=$WORK/images/$name-$VERSION.oci.tar
  skopeo copy --quiet --dest-tls-verify=false "oci-archive:$tar" "docker://$REG/$name:$VERSION" >"$WORK/skopeo.log" 2>&1 \
    || fail "skopeo copy $name: $(cat "$WORK/skopeo.log")"
  pushed=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$REG/$name:$VERSION")
  [[ $pushed == "$(manifest_digest "$tar")" ]] || fail "$name: the registry serves $pushed, the archive holds $(manifest_digest "$tar")"
done
ok "skopeo copy oci-archive: -> docker://$REG/...: the registry serves the archives' digests"
P=(podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --storage-driver vfs)
for tar in "$OP_TAR" "$SC_TAR"; do
  "${P[@]}" load -q -i "$tar" >"$WORK/podman.log" 2>&1 || fail "podman load -i $tar: $(cat "$WORK/podman.log")"
done
loaded=$("${P[@]}" images --format '{{.Repository}}:{{.Tag}}' | sort | tr '\n' ' ')
[[ $loaded == "$OP_REF $SC_REF " ]] || fail "podman load named the images '$loaded'"
"${P[@]}" rmi --all --force >/dev/null
ok "podman load -i: $loaded"

# --- run -------------------------------------------------------------------------------------
OP=$("${B[@]}" from --quiet "oci-archive:$OP_TAR")
SC=$("${B[@]}" from --quiet --tls-verify=false "docker://$REG/llmesh-sidecar:$VERSION")
run() { "${B[@]}" run --isolation chroot "$@"; }

version_in() {
  local c=$1 name=$2 got
  got=$(run "$c" -- "/usr/local/bin/$name" --version 2>&1) || fail "$name --version in its image: $got"
  [[ $got == "$name $VERSION" ]] || fail "$name --version in its image says '$got'"
  ok "in its image: $got"
}
version_in "$OP" llmesh-operator
version_in "$SC" llmesh-sidecar

# No service account and no KUBECONFIG: the operator starts, then stops at the credentials
# (exit 2), which shows the runtime and TLS setup load inside the image.
set +e
got=$(run "$OP" -- /usr/local/bin/llmesh-operator 2>&1)
rc=$?
set -e
[[ $rc == 2 && $got == *"no Kubernetes credentials"* ]] || fail "the operator in its image: exit $rc: $got"
ok "the operator in its image stops at the missing credentials (exit 2)"

# A fake provider on the host, reached by names the host does not resolve itself.
"$TARGET/debug/llmesh-fake-provider" --listen 127.0.0.1:0 >"$WORK/fake.out" 2>"$WORK/fake.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$WORK/fake.out" 2>/dev/null && break; sleep 0.1; done
FAKE_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK/fake.out")
[[ -n $FAKE_PORT ]] || fail "the fake provider did not start: $(cat "$WORK/fake.err")"
NAME=upstream.images.llmesh.test
! getent hosts "$NAME" >/dev/null || fail "$NAME resolves on the host; the test needs a name only the image knows"

# The container's copy of the image's /etc/hosts gets one line (a cluster does the same with
# hostAliases); --no-hosts keeps buildah from replacing the file with one of its own.
mnt=$("${B[@]}" mount "$SC")
printf '127.0.0.1\t%s\n' "$NAME" >>"$mnt/etc/hosts"
"${B[@]}" umount "$SC" >/dev/null

mkdir -m 0755 "$WORK/config"
cat >"$WORK/config/routes.yaml" <<EOF
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: mocked}
spec:
  backends:
    - {name: m, provider: mock, model: gpt-4o-mini-2024-07-18, mock: {reply: "answered inside the image", outputTokens: 4}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: by-name}
spec:
  backends:
    - {name: u, provider: openaiCompatible, model: gpt-4o-mini-2024-07-18, baseUrl: "http://$NAME:$FAKE_PORT/s/ok/v1"}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: by-localhost}
spec:
  backends:
    - {name: l, provider: openaiCompatible, model: gpt-4o-mini-2024-07-18, baseUrl: "http://localhost:$FAKE_PORT/s/ok/v1"}
EOF
chmod 0644 "$WORK/config/routes.yaml"
SC_PORT=$(free_port)
run --no-hosts -v "$WORK/config:/config:ro" "$SC" -- /usr/local/bin/llmesh-sidecar \
  --config /config/routes.yaml --listen "127.0.0.1:$SC_PORT" >"$WORK/sidecar.out" 2>"$WORK/sidecar.err" &
run_pid=$!
pids+=("$run_pid")
ready=false
for _ in $(seq 300); do
  if curl -fsS "http://127.0.0.1:$SC_PORT/readyz" >/dev/null 2>&1; then ready=true; break; fi
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.2
done
$ready || fail "the sidecar in its image is not ready: $(cat "$WORK/sidecar.err")"
ok "the sidecar serves from its image on 127.0.0.1:$SC_PORT (host network namespace)"

# The process behind the port: user and group 65532, chrooted into the image.
sc_pid=$(ss -ltnpH "sport = :$SC_PORT" | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2)
[[ -n $sc_pid ]] || fail "no process listens on $SC_PORT"
pids+=("$sc_pid")
uids=$(awk '/^Uid:/{print $2,$3,$4,$5}' "/proc/$sc_pid/status")
gids=$(awk '/^Gid:/{print $2,$3,$4,$5}' "/proc/$sc_pid/status")
[[ $uids == "65532 65532 65532 65532" && $gids == "65532 65532 65532 65532" ]] || fail "the sidecar runs as uid $uids gid $gids"
[[ $(readlink "/proc/$sc_pid/root") != / ]] || fail "the sidecar is not chrooted"
ok "the sidecar runs as 65532:65532 in the image's root"

chat() {
  curl -sS -w '\n%{http_code}' "http://127.0.0.1:$SC_PORT/v1/chat/completions" -H 'content-type: application/json' \
    -d "{\"model\": \"$1\", \"messages\": [{\"role\": \"user\", \"content\": \"$2\"}]}"
}
answer() {
  local out code
  out=$(chat "$1" "$2")
  code=$(tail -n1 <<<"$out")
  [[ $code == 200 ]] || fail "route $1: HTTP $code: $(head -n -1 <<<"$out"); sidecar log: $(tail -n 5 "$WORK/sidecar.err")"
  head -n -1 <<<"$out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
}
got=$(answer mocked "hello")
[[ $got == "answered inside the image" ]] || fail "mock route answered '$got'"
ok "mock route: '$got'"
got=$(answer by-name "resolved through the image hosts file")
[[ $got == "Hello from the fake provider. You said: resolved through the image hosts file" ]] || fail "route by-name answered '$got'"
ok "route to http://$NAME:$FAKE_PORT: '$got'"
got=$(answer by-localhost "resolved as localhost")
[[ $got == "Hello from the fake provider. You said: resolved as localhost" ]] || fail "route by-localhost answered '$got'"
ok "route to http://localhost:$FAKE_PORT: '$got'"
hosts=$(curl -fsS "http://127.0.0.1:$FAKE_PORT/__requests" | python3 -c 'import json, sys; print(" ".join(sorted(r["headers"]["host"] for r in json.load(sys.stdin)["data"])))')
[[ $hosts == "localhost:$FAKE_PORT $NAME:$FAKE_PORT" ]] || fail "the fake saw hosts '$hosts'"
ok "the fake provider saw Host $NAME:$FAKE_PORT and localhost:$FAKE_PORT"

# SIGTERM: the sidecar drains and exits 0, and so does buildah run.
kill -TERM "$sc_pid"
rc=0
wait "$run_pid" || rc=$?
[[ $rc == 0 ]] || fail "buildah run of the sidecar exited $rc after SIGTERM: $(tail -n 5 "$WORK/sidecar.err")"
ok "the sidecar stops on SIGTERM (exit 0)"
