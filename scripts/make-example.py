#!/usr/bin/env python3
"""Writes examples/sc-conv.safetensors: one SC conv layer to simulate.

`input` is 2x8x12x12 post-activation-like values (about half zeros, the rest small
multiples of 1/128, as after Hardtanh(0, 1)); `weight` is 16x8x5x5 small signed
multiples of 1/128. Deterministic (a fixed LCG), standard library only.
"""
import json
import struct
import sys
from pathlib import Path

def lcg(seed):
    state = seed
    while True:
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        yield state >> 33

def main(out: Path) -> None:
    rng = lcg(2023)
    inp = [0.0 if next(rng) % 2 == 0 else (next(rng) % 24) / 128 for _ in range(2 * 8 * 12 * 12)]
    wgt = [(next(rng) % 41) / 128 - 20 / 128 for _ in range(16 * 8 * 5 * 5)]
    tensors = [("input", [2, 8, 12, 12], inp), ("weight", [16, 8, 5, 5], wgt)]
    header, data, offset = {}, b"", 0
    for name, shape, values in tensors:
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    out.write_bytes(struct.pack("<Q", len(text)) + text + data)

if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/sc-conv.safetensors"))
