"""
safetensors files, read and written with the standard library (the project does not depend on the
safetensors package). The format: an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}} (and an optional "__metadata__"), then the raw little-endian
tensor bytes, back to back.
"""

import json
import math
import mmap
import os
import struct

import torch

_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """{name: tensor}. Each tensor is a copy-on-write memory map of its own bytes (mmap.ACCESS_COPY):
    nothing is read until it is used, the pages belong to the page cache (not copied into the
    process), and writing to a tensor changes only this process's copy. A mapping is released when
    its tensor is freed. Like any memory map it reads the file as it is now: the file must not be
    rewritten in place while its tensors live (write_safetensors replaces files by a rename, which
    is safe); clone() a tensor that must outlive its file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise ValueError(
                f"{path}: not a safetensors file (shorter than its 8-byte header length)"
            )
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ValueError(
                f"{path}: corrupt safetensors file (header length {n} exceeds file size)"
            )
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path}: corrupt safetensors file (header is not JSON)") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: corrupt safetensors file (header is not a JSON object)")
        header.pop("__metadata__", None)
        body, body_len = 8 + n, size - 8 - n
        out = {}
        for name, info in header.items():
            info = info if isinstance(info, dict) else {}
            dtype, shape = _ST_DTYPES.get(info.get("dtype")), info.get("shape")
            offsets = info.get("data_offsets")
            start, end = (
                offsets if isinstance(offsets, list) and len(offsets) == 2 else (None, None)
            )
            ints = isinstance(shape, list) and all(
                type(v) is int and v >= 0 for v in [*shape, start, end]
            )
            if (
                dtype is None
                or not ints
                or not start <= end <= body_len
                or end - start != math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            ):
                raise ValueError(f"{path}: corrupt safetensors entry {name!r}")
            out[name] = _map_tensor(f, body + start, end - start, dtype).reshape(shape)
    return out


def _map_tensor(f, offset, nbytes, dtype):
    if nbytes == 0:
        return torch.empty(0, dtype=dtype)
    page = offset - offset % mmap.ALLOCATIONGRANULARITY  # a mapping starts on a page boundary
    buf = mmap.mmap(f.fileno(), offset + nbytes - page, access=mmap.ACCESS_COPY, offset=page)
    skip, itemsize = offset - page, torch.empty((), dtype=dtype).element_size()
    if skip % itemsize:  # misaligned (a file written without alignment): copy this one tensor
        return torch.frombuffer(bytearray(buf[skip : skip + nbytes]), dtype=dtype)
    # holds buf open
    return torch.frombuffer(buf, dtype=dtype, count=nbytes // itemsize, offset=skip)


def write_safetensors(path, tensors, metadata=None):
    """The inverse of read_safetensors, readable by the safetensors library (and so by transformers
    and PEFT): tensors sorted by element size and the header padded to 8 bytes, so every tensor is
    aligned; {"format": "pt"} metadata, which transformers asks for. Streams one tensor at a time to
    path.<pid>.tmp, then renames it over path (a crash never leaves half a file; maps of the old one stay valid)."""
    names = {v: k for k, v in _ST_DTYPES.items()}
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())  # stable: 8-, 4-, 2-, 1-byte
    header, offset = {"__metadata__": {"format": "pt", **(metadata or {})}}, 0
    for name in order:
        t = tensors[name]
        if t.dtype not in names:
            raise ValueError(
                f"write_safetensors: {name!r} has dtype {t.dtype}, which safetensors files here do not hold"
            )
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % 8)
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"  # this writer's own: two writers never share one
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            for name in order:
                t = tensors[name].detach().cpu().contiguous()
                if t.numel():
                    f.write(t.view(-1).view(torch.uint8).numpy().data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
