"""
Hugging Face interop: adapters that PEFT loads, merged models that transformers loads, and PEFT
LoRA adapters that this project loads. Plain files only: nothing here imports transformers, peft or
safetensors (the safetensors files are model.py's own reader and writer).

    python -m formats.interop export-peft out/lora/ckpt.pt out/lora_peft      # adapter -> PEFT LoRA directory
    python -m formats.interop export-hf   out/lora/ckpt.pt out/lora_merged    # merged model -> HF GPT-2 directory
    python -m formats.interop import-peft my_peft_lora out/imported/ckpt.pt   # PEFT LoRA -> adapter checkpoint
    option: --base=PATH   the base model, when not the one the checkpoint or adapter_config.json names

export-peft  an adapter checkpoint of any method (train.py's ckpt.pt) on a Hugging Face GPT-2 base
             -> adapter_config.json + adapter_model.safetensors, for PeftModel.from_pretrained.
             Each module's factors() (B, A, every scale and gate folded into A) become one PEFT
             LoRA with alpha = r, so its scaling is 1: MultiLoRA (rank n·r), NOLA (rank r), CAT
             (rank Σ r_i) and rsLoRA export exactly. q, k and v adapters become one LoRA on GPT-2's
             fused c_attn: A stacks their A's, B puts each B in its own row block (zeros elsewhere),
             exact at rank m·r; rank_pattern / alpha_pattern give c_attn its own rank when it
             differs. PEFT keeps lora_A as (r, in) and lora_B as (out, r) on Conv1D too
             (fan_in_fan_out only transposes its merged ΔW), so the factors are written as they are.
export-hf    a model -> config.json + model.safetensors in GPT-2's names and Conv1D (in, out) layout,
             q, k, v fused back into c_attn, for GPT2LMHeadModel.from_pretrained. The model is an
             adapter checkpoint (merged into its base in fp32: merge_and_unload), a train.py
             full-model checkpoint, or a GPT-2 directory. Any base of this project with bias=True.
import-peft  a PEFT LoRA on GPT-2 (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, any subset and layers)
             -> a LoRA adapter checkpoint of this project (analyze.py, CAT's cat_adapters,
             adapters.load_adapter_checkpoint). A c_attn LoRA splits exactly into q, k and v LoRAs
             that share A (B split in row blocks; rank directions a block never uses are dropped, so
             an export-peft round trip gives back the original ranks). When every module has the
             same r and alpha, r, alpha and use_rslora carry over; otherwise (rank_pattern,
             alpha_pattern, dropped directions) each scale is folded into A and smaller ranks are
             padded with zeros to the largest: r = max rank, alpha = r, still exact. What has no
             counterpart here is refused with one line naming it: DoRA, biases, modules_to_save,
             embedding or lm_head adapters, other architectures, inits that change the base (PiSSA...).
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from collections import Counter

import torch

import adapters
from formats.checkpoint import load_model, read_checkpoint, temp_path, write_error
from formats.huggingface import HF_MODELS
from formats.safetensors import read_safetensors, write_safetensors

# project module -> (GPT-2 module, row block of c_attn or None)
HF_MODULE = {
    "attn.q": ("attn.c_attn", 0),
    "attn.k": ("attn.c_attn", 1),
    "attn.v": ("attn.c_attn", 2),
    "attn.c_proj": ("attn.c_proj", None),
    "mlp.c_fc": ("mlp.c_fc", None),
    "mlp.c_proj": ("mlp.c_proj", None),
}
_KIND_ORDER = ["attn.q", "attn.k", "attn.v", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
_OURS = re.compile(r"transformer\.h\.(\d+)\.(attn\.[qkv]|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)")
_PEFT_KEY = re.compile(
    r"base_model\.model\.(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
    r"\.lora_([AB])\.weight"
)
# adapter_config.json fields that do not change what a saved LoRA computes (metadata, or how it was
# initialised before training); any other field set to something non-empty is refused
_PEFT_INERT = {
    "peft_type",
    "task_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "r",
    "lora_alpha",
    "target_modules",
    "exclude_modules",
    "lora_dropout",
    "fan_in_fan_out",
    "bias",
    "use_rslora",
    "init_lora_weights",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "runtime_config",
    "megatron_core",
    "qalora_group_size",
    "eva_config",
    "ensure_weight_tying",
}
# the others (PiSSA, OLoRA, LoftQ...) change W0
_INERT_INITS = (
    True,
    False,
    "gaussian",
    "eva",
    "orthogonal",
)


def _targets(layer_kinds, n_layer):
    """Module suffixes ('attn.q', ...) when every layer adapts the same ones, else full names."""
    order = lambda kinds: sorted(kinds, key=_KIND_ORDER.index)
    kinds = set(map(frozenset, layer_kinds.values()))
    if len(layer_kinds) == n_layer and len(kinds) == 1:
        return order(next(iter(kinds)))
    return [f"transformer.h.{i}.{k}" for i in sorted(layer_kinds) for k in order(layer_kinds[i])]


def gpt2_config(config, dtype=torch.float32):
    """config.json of the Hugging Face GPT-2 with this GPTConfig's architecture."""
    if not config.bias:
        raise ValueError(
            "this model has bias=False, which Hugging Face GPT-2 cannot express (its Linears and "
            "LayerNorms always have biases): only models trained with bias=True export"
        )
    hf = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",  # the tanh approximation, as model.MLP
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    # GPT-2's <|endoftext|>; another tokenizer's is not known here
    eot = 50256 if config.vocab_size > 50256 else None
    return {**hf, "bos_token_id": eot, "eos_token_id": eot}


def gpt2_state_dict(model):
    """The model's weights in Hugging Face GPT-2 names and Conv1D (in, out) layout, c_attn fused.
    Transposed weights are views: write_safetensors copies them one at a time."""
    sd = model.state_dict()
    out = {
        f"transformer.{k}": sd[f"transformer.{k}"]
        for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")
    }
    for i in range(model.config.n_layer):
        p = f"transformer.h.{i}."
        for k in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            out[p + k] = sd[p + k]
        out[p + "attn.c_attn.weight"] = torch.cat([sd[p + f"attn.{n}.weight"] for n in "qkv"]).t()
        out[p + "attn.c_attn.bias"] = torch.cat([sd[p + f"attn.{n}.bias"] for n in "qkv"])
        for k in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[p + k + ".weight"], out[p + k + ".bias"] = (
                sd[p + k + ".weight"].t(),
                sd[p + k + ".bias"],
            )
    return out


def peft_lora(model):
    """(adapter_config fields, {key: tensor}) of the PEFT LoRA equal to `model`'s adapters."""
    groups, layer_kinds = {}, {}
    for name, m in adapters.adapted_modules(model).items():
        match = _OURS.fullmatch(name)
        if not match:
            raise ValueError(f"the adapter on {name} has no counterpart in Hugging Face GPT-2")
        layer, (hf_kind, block) = int(match[1]), HF_MODULE[match[2]]
        # scale and gates folded into A: ΔW = B @ A
        B, A = (t.detach().float() for t in m.factors())
        groups.setdefault((layer, hf_kind), []).append((block, B, A))
        layer_kinds.setdefault(layer, set()).add(hf_kind)
    if not groups:
        raise ValueError("the model has no adapters to export")
    tensors, ranks = {}, {}
    for (layer, hf_kind), parts in sorted(groups.items()):
        parts.sort(key=lambda part: part[0] or 0)
        A = torch.cat([a for _, _, a in parts])  # (R, d_in)
        if parts[0][0] is None:
            B = parts[0][1]
        else:  # c_attn = [q; k; v]: each B fills its own row block and its own columns
            C = model.config.n_embd
            B, col = A.new_zeros(3 * C, A.shape[0]), 0
            for block, b, _ in parts:
                B[block * C : (block + 1) * C, col : col + b.shape[1]] = b
                col += b.shape[1]
        key = f"base_model.model.transformer.h.{layer}.{hf_kind}"
        tensors[key + ".lora_A.weight"], tensors[key + ".lora_B.weight"] = (
            A.contiguous(),
            B.contiguous(),
        )
        ranks[f"h.{layer}.{hf_kind}"] = A.shape[0]
    r = Counter(ranks.values()).most_common(1)[0][0]
    # PEFT matches these as regexes on the module name
    pattern = {k: R for k, R in ranks.items() if R != r}
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": _targets(layer_kinds, model.config.n_layer),
        "fan_in_fan_out": True,
        "bias": "none",
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    return config, tensors


def _base_name(path):
    return os.path.abspath(path) if os.path.exists(path) else path


def _fresh(out, *inputs):
    """Refuse an output path that exists (nothing is overwritten), and one that is, or holds, one of
    this command's own inputs."""
    for given in inputs:
        if given and os.path.exists(given):
            inside = os.path.realpath(given).startswith(os.path.realpath(out) + os.sep)
            if os.path.realpath(given) == os.path.realpath(out) or inside:
                what = f"holds this command's input {given}" if inside else "this command's input"
                raise ValueError(
                    f"{out} {'' if inside else 'is '}{what}: writing there would destroy it; "
                    "give a new path"
                )
    if os.path.exists(out):
        raise ValueError(f"{out} already exists: give a new path (nothing is overwritten)")


@contextlib.contextmanager
def _new_folder(out):
    """Create the folder `out` for the files written inside the block; if any write fails (a full or
    read-only disk, a path under a file, Ctrl-C), remove it again, so that nothing partial is left
    and a rerun is not refused as "already exists". An OSError becomes one line naming its cause."""
    try:
        os.makedirs(out)
    except OSError as e:
        raise OSError(write_error(e, out)) from None
    try:
        yield
    except OSError as e:
        shutil.rmtree(out, ignore_errors=True)
        raise OSError(f"{write_error(e, out)}; nothing was left at {out}") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _write_json(path, obj):
    tmp = temp_path(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _adapter_base(ck, ckpt_path, base):
    path = base or ck["base"].get("path")
    if not path:
        raise ValueError(
            f"{ckpt_path} names no base model: pass --base=PATH (the model it was trained on)"
        )
    return path


def export_peft(ckpt_path, out, base=None):
    """Write the adapter checkpoint `ckpt_path` as a PEFT LoRA directory. Returns the adapted model."""
    _fresh(out, ckpt_path, base)
    ck = adapters.load_adapter_checkpoint(ckpt_path)
    base = _adapter_base(ck, ckpt_path, base)
    model, base_ckpt = load_model(base)
    if base_ckpt:
        raise ValueError(
            f"the base {base} is a train.py checkpoint, which PEFT cannot load: write it as a Hugging Face "
            f"directory first (python -m formats.interop export-hf {base} DIR) and pass --base=DIR"
        )
    adapters.load_adapter_checkpoint(ckpt_path, model)  # refuses a base with another fingerprint
    config, tensors = peft_lora(model)
    with _new_folder(out):
        write_safetensors(os.path.join(out, "adapter_model.safetensors"), tensors)
        _write_json(
            os.path.join(out, "adapter_config.json"),
            {"base_model_name_or_path": _base_name(base), **config},
        )
    return model


def load_merged(path, base=None):
    """A plain GPT from a GPT-2 name or directory, a train.py full-model checkpoint, or an adapter
    checkpoint merged into its base (fp32 merge, adapters removed)."""
    if os.path.isdir(path) or path in HF_MODELS:
        return load_model(path)[0]
    if "adapter" not in read_checkpoint(path):
        return load_model(path)[0]
    ck = adapters.load_adapter_checkpoint(path)
    model, _ = load_model(_adapter_base(ck, path, base))
    adapters.load_adapter_checkpoint(path, model)
    return adapters.merge_and_unload(model)


def export_hf(path, out, base=None):
    """Write the (merged) model at `path` as a Hugging Face GPT-2 directory. Returns the model."""
    _fresh(out, path, base)
    model = load_merged(path, base)
    dtype = model.transformer.wte.weight.dtype
    config = gpt2_config(model.config, dtype)
    with _new_folder(out):
        write_safetensors(os.path.join(out, "model.safetensors"), gpt2_state_dict(model))
        _write_json(os.path.join(out, "config.json"), config)
    return model


def _check_peft_config(cfg, where):
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type={cfg.get('peft_type')!r}: only LoRA adapters import")
    if cfg.get("bias", "none") != "none":
        raise ValueError(
            f"{where}: bias={cfg['bias']!r} trains biases, which this project's LoRA has not: "
            "only bias='none' imports"
        )
    if cfg.get("init_lora_weights", True) not in _INERT_INITS:
        raise ValueError(
            f"{where}: init_lora_weights={cfg['init_lora_weights']!r} changes the base weights, so the "
            "adapter is not a LoRA on the original GPT-2: convert it in PEFT first "
            "(save_pretrained(path_initial_model_for_weight_conversion=...))"
        )
    for k, v in cfg.items():
        if k not in _PEFT_INERT and v not in (None, False, {}, [], "", "none"):
            raise ValueError(
                f"{where}: {k}={json.dumps(v)[:60]} has no counterpart in this project's LoRA "
                "(a plain LoRA on GPT-2's c_attn, c_proj and c_fc imports)"
            )


def _pattern_value(pattern, name, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the name."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def read_peft_lora(peft_dir):
    """(adapter_config, {(layer, GPT-2 module): (B (out, r), A (r, in), scale)}) of a PEFT LoRA directory."""
    cfg_path = os.path.join(peft_dir, "adapter_config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(
            f"no adapter_config.json in {peft_dir}: give the directory PEFT's save_pretrained wrote"
        )
    with open(cfg_path) as f:
        try:
            cfg = json.load(f)
        except ValueError:
            raise ValueError(f"{cfg_path}: not JSON") from None
    if not isinstance(cfg, dict):
        raise ValueError(
            f"{cfg_path}: expected a JSON object (PEFT's adapter config), got a JSON {type(cfg).__name__}"
        )
    _check_peft_config(cfg, cfg_path)
    st, binf = (
        os.path.join(peft_dir, "adapter_model.safetensors"),
        os.path.join(peft_dir, "adapter_model.bin"),
    )
    if os.path.isfile(st):
        weights, where = read_safetensors(st), st
    elif os.path.isfile(binf):
        weights, where = read_checkpoint(binf), binf
    else:
        raise FileNotFoundError(
            f"{peft_dir} has adapter_config.json but neither adapter_model.safetensors nor adapter_model.bin"
        )
    found = {}
    for key, t in weights.items():
        match = _PEFT_KEY.fullmatch(key)
        if not match:
            raise ValueError(
                f"{where}: {key} is not a LoRA on GPT-2's attn.c_attn, attn.c_proj, mlp.c_fc or mlp.c_proj "
                "(DoRA, biases, embeddings, lm_head and other architectures do not import)"
            )
        found.setdefault((int(match[1]), match[2]), {})[match[3]] = t.float()
    modules = {}
    for (layer, kind), ab in sorted(found.items()):
        if (
            set(ab) != {"A", "B"}
            or ab["A"].dim() != 2
            or ab["B"].dim() != 2
            or ab["A"].shape[0] != ab["B"].shape[1]
        ):
            raise ValueError(
                f"{where}: h.{layer}.{kind} needs lora_A (r, in) and lora_B (out, r), got "
                f"{ {k: tuple(v.shape) for k, v in ab.items()} }"
            )
        r, name = ab["A"].shape[0], f"transformer.h.{layer}.{kind}"
        if _pattern_value(cfg.get("rank_pattern") or {}, name, cfg.get("r", r)) != r:
            raise ValueError(
                f"{where}: h.{layer}.{kind} has rank {r} but adapter_config.json says "
                f"{_pattern_value(cfg.get('rank_pattern') or {}, name, cfg.get('r'))}"
            )
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, name, cfg.get("lora_alpha", 8))
        modules[(layer, kind)] = (
            ab["B"],
            ab["A"],
            adapters.lora_scale(alpha, r, cfg.get("use_rslora", False)),
        )
    if not modules:
        raise ValueError(f"{where} holds no LoRA weights")
    return cfg, modules


def import_peft(peft_dir, out, base=None):
    """Write the PEFT LoRA in `peft_dir` as an adapter checkpoint of this project. Returns the adapted model."""
    _fresh(out, peft_dir, base)
    cfg, modules = read_peft_lora(peft_dir)
    base = base or cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{peft_dir}/adapter_config.json names no base model: pass --base=DIR (its GPT-2 directory)"
        )
    model, _ = load_model(base)
    fingerprint = model.fingerprint()  # of W0, before any adapter
    C, n_layer = model.config.n_embd, model.config.n_layer
    ours, trimmed = {}, False  # project module name -> (B, A, scale)
    for (layer, kind), (B, A, s) in modules.items():
        d_out, d_in = {
            "attn.c_attn": (3 * C, C),
            "attn.c_proj": (C, C),
            "mlp.c_fc": (4 * C, C),
            "mlp.c_proj": (C, 4 * C),
        }[kind]
        if layer >= n_layer or B.shape[0] != d_out or A.shape[1] != d_in:
            raise ValueError(
                f"{peft_dir}: h.{layer}.{kind} (lora_B {tuple(B.shape)}, lora_A {tuple(A.shape)}) does not fit "
                f"the base {base} ({n_layer} layers, n_embd {C}): another model size?"
            )
        if kind != "attn.c_attn":
            ours[f"transformer.h.{layer}.{kind}"] = (B, A, s)
            continue
        for block, sub in enumerate("qkv"):  # rows block·C .. (block+1)·C of ΔW are W_q, W_k, W_v's
            Bj = B[block * C : (block + 1) * C]
            # rank directions this block uses (zero columns add nothing)
            used = Bj.abs().amax(0) > 0
            trimmed |= not bool(used.all())
            if used.any():
                ours[f"transformer.h.{layer}.attn.{sub}"] = (Bj[:, used], A[used], s)
    if not ours:
        raise ValueError(
            f"{peft_dir}: every lora_B is zero (an untrained adapter): nothing to import"
        )
    ranks = {A.shape[0] for _, A, _ in ours.values()}
    # one r and alpha: keep them
    if not trimmed and len(ranks) == 1 and len({s for *_, s in ours.values()}) == 1:
        r, opts = (
            ranks.pop(),
            dict(alpha=float(cfg.get("lora_alpha", 8)), rslora=bool(cfg.get("use_rslora"))),
        )
    else:  # fold each scale into A, pad to the largest rank with zeros: exact, scale 1
        r = max(ranks)
        opts = dict(alpha=float(r), rslora=False)
        ours = {n: (B, A * s, 1.0) for n, (B, A, s) in ours.items()}
    layer_kinds = {}
    for name in ours:
        match = _OURS.fullmatch(name)
        layer_kinds.setdefault(int(match[1]), set()).add(match[2])
    adapters.add_adapters(
        model,
        "lora",
        targets=_targets(layer_kinds, n_layer),
        r=r,
        dropout=float(cfg.get("lora_dropout") or 0.0),
        **opts,
    )
    with torch.no_grad():
        for name, m in adapters.adapted_modules(model).items():
            B, A, _ = ours[name]
            m.lora_A.zero_()[: A.shape[0]] = A
            m.lora_B.zero_()[:, : B.shape[1]] = B
    save_adapter(
        out,
        model,
        {"path": _base_name(base), "fingerprint": fingerprint},
        source={"peft": os.path.abspath(peft_dir)},
    )
    return model


def save_adapter(path, model, base, **extra):
    """adapters.save_adapter_checkpoint, into a folder created if need be (and removed again if the
    write fails: nothing partial is left)."""
    folder, made = os.path.dirname(path), None
    try:
        if folder and not os.path.isdir(folder):
            made = folder
            os.makedirs(folder)
        return adapters.save_adapter_checkpoint(path, model, base=base, **extra)
    except BaseException as e:
        if made and os.path.isdir(made) and not os.listdir(made):
            os.rmdir(made)
        if isinstance(e, OSError):
            raise OSError(write_error(e, path)) from None
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m formats.interop",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0].strip(),
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{export-peft,export-hf,import-peft}"
    )
    base_help = "the base model (a GPT-2 directory or name, or a train.py checkpoint); default: the one the input names"
    p = sub.add_parser(
        "export-peft",
        help="adapter checkpoint -> PEFT LoRA directory (adapter_config.json + adapter_model.safetensors)",
    )
    p.add_argument(
        "adapter",
        help="an adapter checkpoint (train.py's ckpt.pt, any method) on a Hugging Face GPT-2 base",
    )
    p.add_argument("out", help="the directory to create")
    p.add_argument("--base", help=base_help)
    p = sub.add_parser(
        "export-hf",
        help="merged model -> Hugging Face GPT-2 directory (config.json + model.safetensors)",
    )
    p.add_argument(
        "model",
        help="an adapter checkpoint (merged into its base), a train.py full-model checkpoint, or a GPT-2 directory",
    )
    p.add_argument("out", help="the directory to create")
    p.add_argument("--base", help=base_help)
    p = sub.add_parser(
        "import-peft", help="PEFT LoRA directory -> adapter checkpoint of this project"
    )
    p.add_argument(
        "peft_dir", help="a directory written by PEFT's save_pretrained (a LoRA on GPT-2)"
    )
    p.add_argument("out", help="the adapter checkpoint to create (a .pt file)")
    p.add_argument(
        "--base",
        help="the GPT-2 directory the adapter was trained on; default: its base_model_name_or_path",
    )
    a = parser.parse_args(argv)
    try:
        if a.command == "export-peft":
            export_peft(a.adapter, a.out, a.base)
            print(
                f"wrote {a.out}/adapter_config.json and adapter_model.safetensors (PeftModel.from_pretrained)"
            )
        elif a.command == "export-hf":
            export_hf(a.model, a.out, a.base)
            print(
                f"wrote {a.out}/config.json and model.safetensors (GPT2LMHeadModel.from_pretrained)"
            )
        else:
            model = import_peft(a.peft_dir, a.out, a.base)
            cfg = adapters.adapter_config(model)
            print(f"wrote {a.out}: LoRA r={cfg['r']} alpha={cfg['alpha']} on {cfg['targets']}")
    except (ValueError, OSError, RuntimeError) as e:  # OSError: a full or read-only disk, ...
        sys.exit(f"formats.interop: {e}")


if __name__ == "__main__":
    main()
