#!/usr/bin/python3
"""torch.save size of models given as raw little-endian float32 files.

Usage: bench_store_torch.py SHAPES RAW...   SHAPES: "name:d0xd1,name:d0,..."
Prints one line per RAW file: its torch.save size in bytes in the zip format
(PyTorch's default) and in the legacy one, so bench_store.lua, which uses this
as the PyTorch peer, can keep the smaller."""
import io
import sys

import torch


def main():
    shapes = []
    for item in sys.argv[1].split(","):
        name, dims = item.split(":")
        shapes.append((name, [int(d) for d in dims.split("x")]))
    for path in sys.argv[2:]:
        data = open(path, "rb").read()
        flat = torch.frombuffer(bytearray(data), dtype=torch.float32)
        state, pos = {}, 0
        for name, dims in shapes:
            n = 1
            for d in dims:
                n *= d
            state[name] = flat[pos:pos + n].clone().reshape(dims)
            pos += n
        sizes = []
        for zip_format in (True, False):
            buf = io.BytesIO()
            torch.save(state, buf, _use_new_zipfile_serialization=zip_format)
            sizes.append(len(buf.getvalue()))
        print(*sizes)


if __name__ == "__main__":
    main()
