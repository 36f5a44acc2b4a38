#!/usr/bin/env bash
# Here, before the GPU calls of benchmarks/gpu_check.sh (docs/gpu.md):
#
#   bash benchmarks/gpu_prepare.sh prepare [CIFAR10.npz]   wheels into .whl/, the data set in three parts into .gpu/
#   bash benchmarks/gpu_prepare.sh park                    keep checkpoints/ (231 MB) from travelling
#   bash benchmarks/gpu_prepare.sh unpark                  put checkpoints/ back in the index; run it right after the
#                                                          calls, and never commit while parked
#   bash benchmarks/gpu_prepare.sh sizes                   what each call of docs/gpu.md would carry, in MB
#
# A call carries at most 64 MiB; CIFAR-10 (170 MB as .npz) travels as three byte-ranges of the file, kept in /tmp
# on the warm machine and joined there (checked by sha256).
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE=.git/info/exclude

sizes() {
  local tree
  tree=$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  echo "working tree that travels: $((tree / 1000000)) MB"
  for f in .whl .gpu/cifar10.npz.part*; do
    [ -e "$f" ] && echo "$f: $(($(du -sb "$f" | cut -f1) / 1000000)) MB"
  done
  return 0
}

case ${1:-} in
  prepare)
    data=${2:-${CIFAR10_PATH:-../shared/data/cifar10.npz}}
    mkdir -p .whl .gpu
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl keras==3.15.1 namex optree
    rm -f .gpu/cifar10.npz.part*
    split -n 3 -d "$data" .gpu/cifar10.npz.part
    (cd "$(dirname "$data")" && sha256sum "$(basename "$data")") | sed 's/ .*/  cifar10.npz/' >.gpu/cifar10.npz.sha256
    ls -l .whl .gpu
    sizes
    ;;
  park)
    git rm -r -q --cached checkpoints
    grep -qx /checkpoints/ "$EXCLUDE" 2>/dev/null || echo /checkpoints/ >>"$EXCLUDE"
    echo "checkpoints/ parked: run 'bash benchmarks/gpu_prepare.sh unpark' right after the calls"
    sizes
    ;;
  unpark)
    git reset -q -- checkpoints
    [ -f "$EXCLUDE" ] && sed -i '\#^/checkpoints/$#d' "$EXCLUDE"
    git status --short | head
    ;;
  sizes) sizes ;;
  *)
    sed -n '2,11p' "$0"
    exit 2
    ;;
esac
