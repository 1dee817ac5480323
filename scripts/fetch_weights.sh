#!/usr/bin/env bash
# Fetch the ImageNet MobileNet-V1 1.0 (TF-slim) frozen GraphDef that clq imports (paper.md §8,
# clq/model/imagenet.py) into .cache/weights/ (or $CLQ_WEIGHTS_DIR):
#   - `pip download --no-deps nudity==0.2.3` (the sdist only; it is never installed, it wants TensorFlow),
#     pinned by the sdist's SHA-256 so that pip refuses any other file before building its metadata,
#   - extract nudity-0.2.3/nudity/files/retrained_graph.pb from it and verify that file's SHA-256.
# Idempotent: a verified file in place means nothing is downloaded. Needs PyPI reachable the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

SDIST_SHA256=d26e10346f00ad76b1166a221f1b56877d154ca343e82c6e6c8e738ca5f27d5f
GRAPH_SHA256=3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735  # = clq.model.imagenet.WEIGHTS_SHA256
MEMBER=nudity-0.2.3/nudity/files/retrained_graph.pb
dest="${CLQ_WEIGHTS_DIR:-.cache/weights}"
target="$dest/mobilenet_v1_1.0_224_retrained_graph.pb"      # = clq.model.imagenet.WEIGHTS_FILENAME

verified() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

if verified "$target" "$GRAPH_SHA256"; then
  echo "fetch_weights: $target ready"
  exit 0
fi

PY=.venv/bin/python
[[ -x "$PY" ]] || PY=${PYTHON:-python3}
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "fetch_weights: downloading the nudity==0.2.3 sdist from PyPI"
echo "nudity==0.2.3 --hash=sha256:$SDIST_SHA256" > "$tmp/requirements.txt"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
  --require-hashes -r "$tmp/requirements.txt" -d "$tmp/dl"
sdist="$tmp/dl/nudity-0.2.3.tar.gz"
verified "$sdist" "$SDIST_SHA256" || { echo "fetch_weights: sdist checksum mismatch" >&2; exit 1; }

tar -xzf "$sdist" -C "$tmp" "$MEMBER"
if ! verified "$tmp/$MEMBER" "$GRAPH_SHA256"; then
  echo "fetch_weights: $MEMBER checksum mismatch (expected $GRAPH_SHA256)" >&2
  exit 1
fi
mv "$tmp/$MEMBER" "$target.part"
mv "$target.part" "$target"  # atomic: a half-copied file never carries the final name
echo "fetch_weights: $target ready"
