#!/usr/bin/env python3
"""Checks one OCI archive written by scripts/build-images.sh, reading the archive itself (what a
user loads or pushes), and prints its sizes.

    check_archive.py ARCHIVE --ref REF --binary HOST_BINARY --version V --revision R --source URL

Asserts: one image named REF; config user 65532:65532, entrypoint the binary, no cmd; the OCI
labels; one layer whose files are exactly the binary (byte for byte the host's), the shared
libraries and loader `ldd` names for it (byte for byte the host's), /etc/passwd, /etc/group,
/etc/nsswitch.conf and /etc/hosts, and their parent directories; every entry owned by root, none
setuid, setgid or writable by others; the user 65532 in /etc/passwd and /etc/group; `hosts:
files dns`. Prints `SIZE name archive=... layer=... unpacked=...` in bytes.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

ETC = ["/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts"]


def fail(msg: str) -> None:
    print(f"  FAIL {msg}", file=sys.stderr)
    sys.exit(1)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ldd_paths(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    if "statically linked" in out or "not a dynamic executable" in out:
        return []
    return re.findall(r"(?:^|\s)(/\S+)", out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive")
    ap.add_argument("--ref", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--revision", required=True)
    ap.add_argument("--source", required=True)
    a = ap.parse_args()
    name = os.path.basename(a.binary)

    outer = tarfile.open(a.archive)

    def blob(digest: str) -> bytes:
        algo, hexd = digest.split(":", 1)
        return outer.extractfile(f"blobs/{algo}/{hexd}").read()

    index = json.loads(outer.extractfile("index.json").read())
    if len(index["manifests"]) != 1:
        fail(f"{name}: {len(index['manifests'])} images in the archive, expected 1")
    desc = index["manifests"][0]
    ref = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
    if ref != a.ref:
        fail(f"{name}: archive names the image {ref!r}, expected {a.ref!r}")
    manifest = json.loads(blob(desc["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    cfg = config.get("config", {})
    if config.get("os") != "linux":
        fail(f"{name}: os {config.get('os')!r}")
    if cfg.get("User") != "65532:65532":
        fail(f"{name}: user {cfg.get('User')!r}, expected '65532:65532'")
    if cfg.get("Entrypoint") != [f"/usr/local/bin/{name}"]:
        fail(f"{name}: entrypoint {cfg.get('Entrypoint')!r}")
    if cfg.get("Cmd"):
        fail(f"{name}: cmd {cfg.get('Cmd')!r}, expected none (the chart passes args only)")
    want_labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": a.version,
        "org.opencontainers.image.revision": a.revision,
        "org.opencontainers.image.source": a.source,
    }
    labels = cfg.get("Labels") or {}
    for k, v in want_labels.items():
        if labels.get(k) != v:
            fail(f"{name}: label {k}={labels.get(k)!r}, expected {v!r}")

    layers = manifest["layers"]
    if len(layers) != 1:
        fail(f"{name}: {len(layers)} layers, expected 1")
    raw = blob(layers[0]["digest"])
    if layers[0]["mediaType"].endswith("+gzip"):
        raw_layer = gzip.decompress(raw)
    else:
        raw_layer = raw
    layer = tarfile.open(fileobj=io.BytesIO(raw_layer))

    host_files = {f"/usr/local/bin/{name}": a.binary}
    for lib in ldd_paths(a.binary):
        host_files[lib] = lib
    want_files = set(host_files) | set(ETC)
    want_dirs = set()
    for f in want_files:
        d = os.path.dirname(f)
        while d != "/":
            want_dirs.add(d)
            d = os.path.dirname(d)

    files, dirs, content, modes, unpacked = set(), set(), {}, {}, 0
    for m in layer.getmembers():
        path = "/" + re.sub(r"^\./", "", m.name).strip("/")
        if path in ("/", "/."):
            continue
        if m.uid != 0 or m.gid != 0:
            fail(f"{name}: {path} owned by {m.uid}:{m.gid}, expected root")
        if m.mode & 0o6002:
            fail(f"{name}: {path} has mode {oct(m.mode)} (setuid, setgid or writable by others)")
        if m.isdir():
            dirs.add(path)
        elif m.isfile():
            files.add(path)
            unpacked += m.size
            content[path] = layer.extractfile(m).read()
            modes[path] = m.mode & 0o7777
        else:
            fail(f"{name}: unexpected entry {path} (type {m.type!r})")
    if files != want_files:
        fail(f"{name}: files differ: extra {sorted(files - want_files)}, missing {sorted(want_files - files)}")
    if dirs != want_dirs:
        fail(f"{name}: directories differ: extra {sorted(dirs - want_dirs)}, missing {sorted(want_dirs - dirs)}")
    for path, host in host_files.items():
        if hashlib.sha256(content[path]).hexdigest() != sha256_file(host):
            fail(f"{name}: {path} in the image is not the host's {host}")
    if modes[f"/usr/local/bin/{name}"] != 0o755:
        fail(f"{name}: the binary has mode {oct(modes[f'/usr/local/bin/{name}'])}, expected 0755")

    passwd = content["/etc/passwd"].decode()
    if not re.search(r"^[a-z]+:x:65532:65532:", passwd, re.M):
        fail(f"{name}: /etc/passwd has no user 65532: {passwd!r}")
    if not re.search(r"^[a-z]+:x:65532:", content["/etc/group"].decode(), re.M):
        fail(f"{name}: /etc/group has no group 65532")
    if not re.search(r"^hosts:\s+files dns\s*$", content["/etc/nsswitch.conf"].decode(), re.M):
        fail(f"{name}: /etc/nsswitch.conf does not resolve hosts through files then dns")
    if not re.search(r"^127\.0\.0\.1\s+localhost\b", content["/etc/hosts"].decode(), re.M):
        fail(f"{name}: /etc/hosts has no localhost")

    print(
        f"SIZE {name} archive={os.path.getsize(a.archive)} layer={layers[0]['size']} "
        f"unpacked={unpacked} binary={os.path.getsize(a.binary)} files={len(files)} "
        f"libs={','.join(sorted(os.path.basename(p) for p in host_files if p != f'/usr/local/bin/{name}'))}"
    )


if __name__ == "__main__":
    main()
