#!/usr/bin/env python3
"""Cut the embedded Fashion-MNIST subset from the full IDX files.

Usage: scripts/make-subset.py FULL_DIR OUT_DIR [TRAIN_COUNT] [TEST_COUNT]

FULL_DIR holds the four `*-idx?-ubyte.gz` files of Fashion-MNIST (as
`scripts/fetch-data.sh fashion-mnist DIR` leaves them). Writes the first TRAIN_COUNT
(6000) training and TEST_COUNT (1000) test images and labels to OUT_DIR as IDX,
gzip level 9 with mtime 0, so the bytes are reproducible. Standard library only.
"""
import gzip
import struct
import sys
from pathlib import Path


def cut(src: Path, dst: Path, count: int) -> None:
    data = gzip.open(src).read()
    magic, n = struct.unpack(">II", data[:8])
    rank = magic & 0xFF
    dims = struct.unpack(">" + "I" * rank, data[4 : 4 + 4 * rank])
    per_item = 1
    for d in dims[1:]:
        per_item *= d
    if count > n:
        sys.exit(f"{src}: has {n} items, asked for {count}")
    header = struct.pack(">I", magic) + struct.pack(">" + "I" * rank, count, *dims[1:])
    body = data[4 + 4 * rank : 4 + 4 * rank + count * per_item]
    with open(dst, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as g:
            g.write(header + body)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    full, out = Path(sys.argv[1]), Path(sys.argv[2])
    train = int(sys.argv[3]) if len(sys.argv) > 3 else 6000
    test = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            cut(full / name, out / name, count)


if __name__ == "__main__":
    main()
