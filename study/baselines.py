"""
What study.py measures the adapters against, built on adapters.py without changing it:

    merging skill LoRAs into W0   LoRA Soups' baselines for CAT: ΔW averaging and TIES (Yadav et al. 2023)
    4-bit NOLA coefficients       the NOLA paper's compressed checkpoint, against full precision
"""

import os

import torch

import adapters

# -----------------------------------------------------------------------------
# merge baselines: combine per-skill ΔW into one, add it into a plain model's weights


def lora_deltas(ckpt_or_path):
    """{module name: ΔW (fp32, base layout)} of a LoRA adapter checkpoint (a path or what
    adapters.load_adapter_checkpoint returned), without a model."""
    is_path = isinstance(ckpt_or_path, (str, os.PathLike))
    ck = adapters.load_adapter_checkpoint(ckpt_or_path) if is_path else ckpt_or_path
    cfg, st = ck["config"], ck["state"]
    if cfg["method"] != "lora":
        raise ValueError(
            f"lora_deltas reads LoRA adapters, got {cfg['method']} (adapters.to_lora converts one)"
        )
    s = adapters.lora_scale(cfg["alpha"], cfg["r"], cfg.get("rslora"))
    return {
        k[:-7]: s * st[k[:-7] + ".lora_B"].float() @ v.float()
        for k, v in st.items()
        if k.endswith(".lora_A")
    }


def merge_deltas(deltas, method="mean", density=0.2, lam=1.0):
    """Combine per-skill {name: ΔW} dicts into one.
    mean: task arithmetic with averaged task vectors, lam · mean_i ΔW_i.
    ties: Yadav et al. 2023 — per skill keep the top `density` fraction of |ΔW| (trim; per module,
    (our choice): the paper trims over the whole task vector), elect each entry's sign as the sign
    of the summed trimmed values, average only the entries that agree (disjoint mean)."""
    if method not in ("mean", "ties"):
        raise ValueError(f"merge method must be 'mean' or 'ties', got {method!r}")
    if not deltas or any(set(d) != set(deltas[0]) for d in deltas):
        raise ValueError("merge_deltas needs a non-empty list of ΔW dicts over the same modules")
    out = {}
    for name in deltas[0]:
        D = torch.stack([d[name].float() for d in deltas])  # (N, d_out, d_in)
        if method == "mean":
            out[name] = lam * D.mean(0)
            continue
        flat = D.flatten(1)
        keep = max(1, int(round(density * flat.shape[1])))
        thresh = flat.abs().kthvalue(flat.shape[1] - keep + 1, dim=1, keepdim=True).values
        D = D * (flat.abs() >= thresh).view_as(D)  # trim
        sign = torch.sign(D.sum(0))  # elect
        agree = (torch.sign(D) == sign) & (D != 0)
        out[name] = lam * (D * agree).sum(0) / agree.sum(0).clamp_min(1)  # disjoint mean
    return out


@torch.no_grad()
def apply_deltas(model, deltas):
    """W0 += ΔW (fp32, then cast) for each named nn.Linear of a plain model, in place."""
    adapters.refuse_tied(model, list(deltas))
    for name, d in deltas.items():
        lin = model.get_submodule(name)
        if lin.weight.shape != d.shape:
            raise ValueError(
                f"ΔW for {name} has shape {tuple(d.shape)}, weight is {tuple(lin.weight.shape)}"
            )
        lin.weight.copy_((lin.weight.float() + d.to(lin.weight.device)).to(lin.weight.dtype))
    return model


# -----------------------------------------------------------------------------
# NOLA with 4-bit coefficients: symmetric max-abs codes, one fp32 scale per coefficient vector


def quantize4(c):
    """Symmetric 4-bit: codes -7..7 = round(7 c / max|c|), two codes per uint8. Returns (packed, scale)."""
    scale = c.detach().float().abs().max().clamp_min(1e-12) / 7
    q = (c.detach().float() / scale).round().clamp(-7, 7).to(torch.uint8) + 8  # 1..15
    q = torch.cat([q, q.new_full((q.numel() % 2,), 8)])  # pad to even
    return q[0::2] | (q[1::2] << 4), scale.reshape(1)


def dequantize4(packed, scale, numel):
    q = torch.stack([packed & 15, packed >> 4], 1).flatten()[:numel]
    return (q.float() - 8) * scale


def quantize_nola_state(sd):
    """A NOLA adapter state dict with every coef_A / coef_B as '<key>_q4' (packed codes) + '<key>_scale'."""
    out = {}
    for k, v in sd.items():
        if k.endswith((".coef_A", ".coef_B")):
            out[k + "_q4"], out[k + "_scale"] = quantize4(v)
        else:
            out[k] = v
    return out


def dequantize_nola_state(sd_q4, model):
    """quantize_nola_state's output back to float coefficients, shaped and typed as `model`'s adapters
    (a NOLA model built with the same config), ready for adapters.load_adapter_state_dict."""
    like = adapters.adapter_state_dict(model)
    sd = {k: v for k, v in sd_q4.items() if not k.endswith(("_q4", "_scale"))}
    for k in [k[:-3] for k in sd_q4 if k.endswith("_q4")]:
        if k not in like:
            raise ValueError(
                f"4-bit state does not fit this model: {k} is not one of its coefficients"
            )
        sd[k] = dequantize4(sd_q4[k + "_q4"], sd_q4[k + "_scale"], like[k].numel()).to(
            like[k].dtype
        )
    return sd
