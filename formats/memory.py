"""
What a GPT of a given shape needs in memory, and what this machine has: sizes that cannot fit are
refused in one line with the estimate, before anything is allocated (a model of 10^6 layers or a
batch of 10^8 sequences would otherwise swap or hang for minutes with no word).
The estimates are lower bounds (the weights, the optimizer's state, the batch, and a few saved
activations per token and layer): a run refused here could never have fit; one let through still might not.
"""

import os

import torch


def gpt_params(n_layer, n_embd, vocab_size, block_size, **_):
    """Parameters of model.GPT: per block 12·C² (q, k, v, proj: 4·C²; the MLP: 8·C²) and about 13·C of
    biases and LayerNorms; the token and position embeddings (lm_head shares the token one)."""
    return n_layer * (12 * n_embd**2 + 13 * n_embd) + (vocab_size + block_size + 2) * n_embd


def training_bytes(args, batch_size, block_size, dtype_bytes=4, full=True):
    """{part: bytes} of a training step of a GPT with GPTConfig-like args: fp32 weights, their gradient
    and two AdamW moments when every weight trains (adapters are too small to count), the batch
    (inputs and targets, int64), and at least ~10 activations of n_embd per token and layer plus the
    logits and their gradient, kept for the backward pass."""
    n = gpt_params(**args)
    tokens = batch_size * block_size
    return {
        "weights": 4 * n,
        "gradients and AdamW state": 12 * n if full else 0,
        "batch": 2 * 8 * tokens,
        "activations": dtype_bytes
        * tokens
        * (10 * args["n_layer"] * args["n_embd"] + 2 * args["vocab_size"]),
    }


def available_memory(device="cpu"):
    """(bytes, what) this device can still give, or (None, '') where it cannot be told."""
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"free memory on {device}"
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, "available memory"
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), "available memory"
        except (ValueError, OSError, AttributeError):
            return None, ""


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024


def refuse_if_too_big(what, parts, device="cpu", hint="pick smaller sizes"):
    """ValueError naming the estimate, part by part, when it exceeds what the device has."""
    have, kind = available_memory(device)
    need = sum(parts.values())
    if have is not None and need > have:
        shown = ", ".join(f"{k} {human(v)}" for k, v in parts.items() if v)
        raise ValueError(
            f"{what} needs at least {human(need)} ({shown}) but this machine has {human(have)} of "
            f"{kind}: {hint}"
        )
