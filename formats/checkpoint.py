"""
train.py checkpoints: written atomically, read with weights_only=True (a pickle that would run code is
refused), and load_model, which gives a GPT from a checkpoint or from GPT-2 weights.
"""

import errno
import os
import shutil
from dataclasses import fields

import torch

from formats.huggingface import HF_MODELS
from model import GPT, GPTConfig


def load_model(path, device="cpu"):
    """A model from a train.py checkpoint (with its full weights), or a GPT-2 name/directory.
    Returns (model, ckpt); ckpt is {} for GPT-2 weights."""
    if os.path.isdir(path) or path in HF_MODELS:
        return GPT.from_pretrained(path), {}
    ckpt = read_checkpoint(path, device)
    if "model_args" not in ckpt or "model" not in ckpt:
        raise ValueError(
            f"{path}: not a full-model checkpoint of this project (no 'model_args'/'model'); "
            "adapter checkpoints need their base: see adapters.py"
        )
    known = {f.name for f in fields(GPTConfig)}
    model = GPT(GPTConfig(**{k: v for k, v in ckpt["model_args"].items() if k in known}))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise ValueError(
            f"{path}: its weights do not fit its own model_args (a damaged or edited checkpoint)"
        ) from None
    return model.to(device), ckpt


def write_checkpoint(obj, path):
    """torch.save to path.tmp, then an atomic rename: a crash or a full disk mid-write never destroys
    the last good checkpoint at `path`, and a failed write leaves no partial .tmp behind."""
    tmp = path + ".tmp"
    try:
        torch.save(obj, tmp)
    except (
        OSError,
        RuntimeError,
    ) as e:  # torch reports a full disk as "unexpected pos" / "file write failed"
        if os.path.exists(tmp):
            os.remove(tmp)
        folder = os.path.dirname(os.path.abspath(path))
        free = shutil.disk_usage(folder).free
        full = (
            getattr(e, "errno", None) == errno.ENOSPC
            or free < 64 * 2**20
            or any(s in str(e) for s in ("unexpected pos", "file write failed", "No space left"))
        )
        why = (
            f"disk full ({free / 2**20:.0f} MiB free in {folder})"
            if full
            else f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        )
        keep = (
            f"the previous {path} is untouched"
            if os.path.exists(path)
            else "no checkpoint was written"
        )
        raise RuntimeError(
            f"could not write {path}: {why}; {keep} and the partial {tmp} was removed"
        ) from None
    os.replace(tmp, path)


def read_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True (tensors and plain Python only: a pickle that would run code
    is refused), every failure turned into one line."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no checkpoint at {path}: run train.py first, or give a GPT-2 name or directory"
        )
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: not a loadable checkpoint ({type(e).__name__}); only plain tensors are accepted"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint of this project (not a dict)")
    return ckpt
