#!/usr/bin/env bash
# The Bento's container image, built and run for real on a machine that cannot pull from a registry.
#
#     sudo deploy/container_check.sh            # from the repository root, after `make install`
#
# What it does, and what it substitutes for the normal `bentoml containerize` + `docker run` path:
#   1. A base image built locally instead of pulled: Debian bookworm (Python 3.11, like python:3.11-slim)
#      from Debian's packages with mmdebstrap, imported into podman as $BASE. The host's CA bundle is copied
#      in and named by SSL_CERT_FILE / PIP_CERT / UV_NATIVE_TLS, and PIP_BREAK_SYSTEM_PACKAGES is set so that
#      the Dockerfile's `pip install uv` works on Debian's system Python (python:3.11-slim has its own).
#   2. podman (Debian's 4.3) instead of Docker: runc as runtime, host networking, and a containers.conf
#      whose [containers] clears default_ulimits (the defaults cannot be applied inside this VM).
#   3. `bentoml build` as usual (the bundled checkpoints exported into a private BENTOML_HOME), then the
#      build context and Dockerfile `bentoml containerize` generates (BentoML's construct_containerfile:
#      the Bento plus its models), the Dockerfile unchanged except its FROM line (python:3.11-slim -> $BASE),
#      built by `podman build`. Python packages still come from the package
#      index, exactly as requirements.txt pins them (torch with its CUDA libraries: the image runs on a GPU
#      host too, but no GPU was exercised here).
#   4. The image is run with --network host, the server bound to 127.0.0.1:$PORT; the script times the cold
#      start (podman run -> /readyz 200) and calls /readyz, /models, /generate, /generate_image, /translate
#      and an augmentation job (submit, status until done, result) over loopback HTTP.
# Prints one JSON report (image size, cold start, what each call answered) and writes it to $WORK/report.json.
# Exit status 0 only if every call answered as expected. Idempotent: a base image already present is reused.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${GANFORGE_CONTAINER_WORK:-/var/tmp/ganforge-container}
BASE=${GANFORGE_BASE_IMAGE:-localhost/ganforge-base:bookworm}
IMAGE=${GANFORGE_IMAGE:-localhost/ganforge:check}
PORT=${PORT:-3917}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
NAME=ganforge-check-$$
HOST_CA=/etc/ssl/certs/ca-certificates.crt

log() { printf '[container_check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (podman's rootful storage and mmdebstrap need it)"
[ -x "$PY" ] || die "no $PY: run 'make install' first (or set PYTHON)"
need=()
command -v podman >/dev/null || need+=(podman)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v runc >/dev/null || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} from Debian's packages"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
mkdir -p "$WORK"

# podman configuration of this check only (the host's own containers.conf is left alone).
cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"

# 1. the base image
if podman image exists "$BASE"; then
  log "base image $BASE present"
else
  log "building base image $BASE from Debian bookworm packages ($MIRROR)"
  rm -rf "$WORK/rootfs"
  mmdebstrap --quiet --variant=apt --include=python3,python3-pip,python3-venv,ca-certificates,bash \
    bookworm "$WORK/rootfs" "$MIRROR" >&2
  cp "$HOST_CA" "$WORK/rootfs/etc/ssl/host-ca-bundle.crt"
  tar -C "$WORK/rootfs" -c . | podman import \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/host-ca-bundle.crt' \
    --change 'ENV UV_NATIVE_TLS=1' \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

# 3. the Bento and its Containerfile
export BENTOML_HOME="$WORK/bentoml" BENTOML_DO_NOT_TRACK=True
cd "$ROOT"
for m in fashion_mnist_cgan fashion_mnist_edges2image; do
  "$ROOT/.venv/bin/ganforge" export "checkpoints/$m" --name "$m" >&2
done
log "bentoml build"
"$PY" -m bentoml build --output tag >"$WORK/build.out" 2>&1 || { cat "$WORK/build.out" >&2; die "bentoml build failed"; }
TAG=$(grep -o '__tag__:[^ ]*' "$WORK/build.out" | tail -1 | cut -d: -f2-)
[ -n "$TAG" ] || TAG=$(tail -1 "$WORK/build.out")
# The build context and Containerfile `bentoml containerize` would hand to Docker: the Bento plus its models
# (BentoML 1.4 keeps the weights in the model store, not in the Bento folder), from BentoML's own
# construct_containerfile (bentoml._internal.container, the function containerize calls).
rm -rf "$WORK/context"
"$PY" - "$TAG" "$WORK/context" <<'PYEOF'
import shutil, sys
import bentoml
from bentoml._internal.container import construct_containerfile

with construct_containerfile(bentoml.get(sys.argv[1]), enable_buildkit=True, add_header=True) as (ctx, _):
    shutil.copytree(ctx, sys.argv[2])  # the final Dockerfile is its env/docker/Dockerfile
PYEOF
cp "$WORK/context/env/docker/Dockerfile" "$WORK/Containerfile.generated"
grep -q '^FROM python:3.11-slim AS base-container$' "$WORK/Containerfile.generated" \
  || die "the generated Containerfile's FROM line is not python:3.11-slim (BentoML changed?)"
sed "s#^FROM python:3.11-slim AS base-container\$#FROM $BASE AS base-container#" \
  "$WORK/Containerfile.generated" > "$WORK/Containerfile"
ls "$WORK"/context/models/*/*/model.safetensors >/dev/null || die "no model weights in the build context"
# The previous image of this check and dangling layers go first: the image is ~7 GB (torch's CUDA libraries).
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
podman image prune -f >/dev/null 2>&1 || true
log "podman build $IMAGE from $TAG (FROM $BASE); $(df -h --output=avail /var/lib/containers | tail -1 | tr -d ' ') free"
BUILD_START=$(date +%s)
podman build --network host -f "$WORK/Containerfile" -t "$IMAGE" "$WORK/context" >"$WORK/podman-build.log" 2>&1 \
  || { tail -40 "$WORK/podman-build.log" >&2; die "podman build failed (log: $WORK/podman-build.log)"; }
BUILD_S=$(( $(date +%s) - BUILD_START ))
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")

# 4. run it and call it
cleanup() { podman rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
log "podman run $IMAGE on 127.0.0.1:$PORT"
RUN_START=$("$PY" -c 'import time; print(time.time())')
podman run -d --rm --name "$NAME" --network host -e BENTOML_HOST=127.0.0.1 -e BENTOML_PORT="$PORT" \
  -e OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$IMAGE" >/dev/null
"$PY" "$ROOT/deploy/container_calls.py" --url "http://127.0.0.1:$PORT" --started "$RUN_START" \
  --image "$IMAGE" --tag "$TAG" --size "$SIZE" --build-seconds "$BUILD_S" --base "$BASE" \
  --report "$WORK/report.json" || { podman logs --tail 60 "$NAME" >&2 || true; die "HTTP checks failed"; }
podman logs "$NAME" >"$WORK/container.log" 2>&1 || true
cat "$WORK/report.json"
