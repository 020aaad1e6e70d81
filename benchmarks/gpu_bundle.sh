#!/usr/bin/env bash
# Builds .whl/site.tar.xz: the Python packages benchmarks/gpu_session.sh needs on a lent
# GPU machine, whose Python 3.12 has PyTorch, numpy, pandas, pyarrow and more
# (benchmarks/device_image.txt) but not Ray, MLflow, Hydra, gymnasium or ale-py, and
# which reaches no package index. Run it where PyPI is reachable, then carry .whl:
#   benchmarks/gpu_bundle.sh && (device run with carry [".whl"])
# Ray's wheel alone (79 MB) is over the 64 MiB that a device call carries, so the wheels
# are unpacked, what the session never loads is left out (Ray's Java jars, MLflow's web
# UI), and the rest travels as one xz tarball, unpacked there onto PYTHONPATH.
set -euo pipefail
DEST=${DEST:-.whl}
LIMIT_MB=${LIMIT_MB:-56}   # leaves the checkout room under the 64 MiB a call carries
PIP=(python3 -m pip download -q --only-binary=:all: --python-version 3.12
     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
     --platform manylinux1_x86_64 --platform linux_x86_64 --platform any)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"${PIP[@]}" -d "$WORK/wheels" "ray[tune]==2.60.0" mlflow==3.17.2 gymnasium==1.2.2 \
  ale-py==0.12.1
# hydra-core pins antlr4-python3-runtime 4.9.*, published as a source archive only.
"${PIP[@]}" --no-deps -d "$WORK/wheels" hydra-core==1.3.8 omegaconf==2.3.1
python3 -m pip wheel -q --no-deps -w "$WORK/wheels" antlr4-python3-runtime==4.9.3
norm() { tr 'A-Z_.' 'a-z--' | sed 's/--*/-/g'; }
grep -v '^#' "$(dirname "$0")/device_image.txt" | norm | sort -u >"$WORK/have"
mkdir -p "$WORK/site"
for w in "$WORK"/wheels/*.whl; do
  name=$(basename "$w" | cut -d- -f1 | norm)
  if grep -qx "$name" "$WORK/have"; then continue; fi
  echo "bundling $(basename "$w")"
  unzip -q -o "$w" -d "$WORK/site"
done
rm -rf "$WORK/site/ray/jars" "$WORK/site/mlflow/server/js"
mkdir -p "$DEST"
rm -f "$DEST/site.tar.xz"
tar -cJf "$DEST/site.tar.xz" -C "$WORK/site" .
size=$(( $(stat -c %s "$DEST/site.tar.xz") / 1048576 ))
echo "$DEST/site.tar.xz: $size MiB"
if [ "$size" -gt "$LIMIT_MB" ]; then
  echo "over $LIMIT_MB MiB: leave more out" >&2
  exit 1
fi
