"""
GPT-2 from the Hugging Face hub: the four model names, a one-time download into a cache folder, and
the conversion of HF's GPT-2 weights (Conv1D layout, fused c_attn) into model.py's names.
GPT.from_pretrained calls read_hf_gpt2; formats/interop.py writes the other direction.
"""

import json
import os
import zipfile

import torch

from formats.memory import gpt_params, refuse_if_too_big
from formats.safetensors import read_safetensors

HF_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def hf_download(name, cache_dir=None):
    """Fetch config.json + model.safetensors for a GPT-2 name once into a cache folder."""
    if name not in HF_MODELS:
        raise ValueError(
            f"unknown model {name!r}: give a directory with config.json + model.safetensors, "
            f"or one of {', '.join(HF_MODELS)}"
        )
    cache_dir = cache_dir or os.environ.get(
        "GPT2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lorafamily")
    )
    path = os.path.join(cache_dir, name)
    files = ("config.json", "model.safetensors")
    if all(os.path.exists(os.path.join(path, f)) for f in files):
        return path
    os.makedirs(path, exist_ok=True)
    import urllib.request

    for f in files:
        url = f"https://huggingface.co/{name}/resolve/main/{f}"
        try:
            urllib.request.urlretrieve(url, os.path.join(path, f + ".tmp"))
        except OSError:
            raise RuntimeError(
                f"cannot download {name} (offline?): put config.json and model.safetensors "
                f"from huggingface.co/{name} into {path}/"
            ) from None
        os.replace(os.path.join(path, f + ".tmp"), os.path.join(path, f))
    return path


GPT2_KEYS = ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")


def read_hf_config(path):
    """GPTConfig keyword arguments from a GPT-2 config.json in directory `path`; a config.json of
    another architecture, or a GPT-2 one whose model could not fit in memory, is refused in one line
    naming the field, before any weight is read."""
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} has no config.json: give a Hugging Face GPT-2 directory (config.json + weights)"
        ) from None
    except ValueError:
        raise ValueError(f"{cfg_path}: not JSON") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got a JSON {type(hf).__name__}")
    if hf.get("model_type", "gpt2") != "gpt2":  # (a hand-written GPT-2 config may leave it out)
        raise ValueError(
            f"{cfg_path}: model_type={hf.get('model_type')!r}: only GPT-2 (model_type 'gpt2') "
            "loads here"
        )
    for k in GPT2_KEYS:
        if k not in hf:
            raise ValueError(f"{cfg_path} has no {k!r}, which every GPT-2 config.json has")
        if type(hf[k]) is not int or hf[k] <= 0:
            raise ValueError(f"{cfg_path}: {k}={json.dumps(hf[k])[:40]} is not a positive integer")
    if hf["n_embd"] % hf["n_head"]:
        raise ValueError(
            f"{cfg_path}: n_embd={hf['n_embd']} is not a multiple of n_head={hf['n_head']}"
        )
    args = dict(
        block_size=hf["n_positions"],
        vocab_size=hf["vocab_size"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
    )
    n = gpt_params(**args)
    refuse_if_too_big(
        f"{cfg_path} describes a model of {n:.3g} parameters, which",
        {"fp32 weights": 4 * n},
        hint="is this the config.json you meant?",
    )
    return args


def read_hf_gpt2(name_or_dir):
    """(GPTConfig keyword arguments, HF state dict) of a GPT-2 in Hugging Face layout: config.json +
    model.safetensors or pytorch_model.bin, from a local directory or by name from the download cache."""
    path = name_or_dir if os.path.isdir(name_or_dir) else hf_download(name_or_dir)
    args = read_hf_config(path)
    st, binf = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        sd_hf = read_safetensors(st)  # memory-mapped: read page by page as each weight is copied
    elif os.path.exists(binf):  # a zip-format .bin is memory-mapped too; a legacy one is read whole
        try:  # weights_only: a pickle that would run code is refused, not run
            mmap = zipfile.is_zipfile(binf)
            sd_hf = torch.load(binf, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:
            raise ValueError(
                f"{binf}: not a loadable weights file ({type(e).__name__}); only plain tensors are "
                "accepted"
            ) from None
        if not isinstance(sd_hf, dict):
            raise ValueError(f"{binf}: not a state dict (a {type(sd_hf).__name__})")
    else:
        raise FileNotFoundError(
            f"{path} has config.json but neither model.safetensors nor pytorch_model.bin"
        )
    return args, sd_hf


def convert_hf_gpt2(sd_hf, n_layer, consume=False):
    """Map Hugging Face GPT-2 names onto ours. HF's Conv1D stores weights as (in, out), the transpose
    of nn.Linear's (out, in); c_attn holds q, k, v side by side and is split into three. Every
    tensor is a fresh contiguous fp32 copy (one copy, even for a transposed or bf16 one).
    consume=True empties sd_hf as it goes, so that each source (a memory map) can be released as
    soon as its copy exists: peak memory is the model plus one weight, not twice the model."""
    if not consume:
        sd_hf = dict(sd_hf)
    for k in [k for k in sd_hf if k.startswith("transformer.")]:
        sd_hf[k.removeprefix("transformer.")] = sd_hf.pop(k)
    own = lambda t: torch.empty(t.shape, dtype=torch.get_default_dtype()).copy_(t)

    def pop(k):  # a weight missing from the file: one line naming it, not a KeyError
        if k not in sd_hf:
            raise ValueError(
                f"the GPT-2 weights have no {k!r} (not GPT-2 weights of this config.json?)"
            )
        return sd_hf.pop(k)

    wte = own(pop("wte.weight"))
    # tied: GPT-2 files may omit lm_head
    sd = {
        "lm_head.weight": wte,
        "transformer.wte.weight": wte,
    }
    for k in ("wpe.weight", "ln_f.weight", "ln_f.bias"):
        sd["transformer." + k] = own(pop(k))
    for i in range(n_layer):
        p, q = f"h.{i}.", f"transformer.h.{i}."
        for k in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            sd[q + k] = own(pop(p + k))
        for k in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            sd[q + k + ".weight"] = own(pop(p + k + ".weight").t())
            sd[q + k + ".bias"] = own(pop(p + k + ".bias"))
        w = pop(p + "attn.c_attn.weight").t()  # (3C, C)
        b = pop(p + "attn.c_attn.bias")
        for name, wi, bi in zip("qkv", w.chunk(3, dim=0), b.chunk(3, dim=0)):
            sd[q + f"attn.{name}.weight"], sd[q + f"attn.{name}.bias"] = own(wi), own(bi)
        del w, b
    return sd
