"""
Low-rank adapters for GPT, one short class per paper:

    LoRA       Hu et al. 2021                 ΔW = s · B A
    MultiLoRA  Wang et al. 2023 (2311.11501)  ΔW = Σ_i g_i · s · B_i A_i
    NOLA       Koohpayegani et al. ICLR 2024  ΔW = s · (Σ_j β_j B_j)(A0 + Σ_j α_j A_j)
    CAT        Prabhakar et al. 2024          ΔW = Σ_i w_i · s_i · B_i A_i   (frozen skill LoRAs)

Every class wraps a frozen nn.Linear (W0 of shape (d_out, d_in), the torch layout) and computes
    h = base(x) + B (A x)          (training forward: ΔW is never materialised)
Shared mechanics (freezing, merge/unmerge in fp32, ΔW, state dicts) live in AdapterLinear.
Where a paper left a choice open, the comment says "(our choice)" and an option offers the other.
"""
import hashlib
import math
import os
from fnmatch import fnmatchcase

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# shared mechanics

class AdapterLinear(nn.Module):
    """base(x) + update(x). Subclasses define update() and factors(); nothing else."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.d_out, self.d_in = base.weight.shape
        self.merged = False

    def _new(self, *shape):
        # adapter tensors live where the base weight lives, in its dtype
        return torch.empty(*shape, device=self.base.weight.device, dtype=self.base.weight.dtype)

    def update(self, x):
        raise NotImplementedError

    def factors(self):
        """(B (d_out, R), A (R, d_in)) in fp32 with scale and gates folded in, so ΔW = B @ A."""
        raise NotImplementedError

    def delta_weight(self):
        B, A = self.factors()
        return B @ A  # (d_out, d_in), fp32, same layout as base.weight

    def forward(self, x):
        if self.merged:  # W0 + ΔW sits in base.weight: the base model's cost (and no adapter grads)
            return self.base(x)
        return self.base(x) + self.update(x)

    # merge/unmerge are explicit calls only: .train()/.eval() never touch the weights (unlike loralib)
    @torch.no_grad()
    def merge(self):
        if self.merged:
            return
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))  # fp32 sum, then cast (bf16-safe)
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            return
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        self.merged = False

    def extra_repr(self):
        return f"d_in={self.d_in}, d_out={self.d_out}, merged={self.merged}"


def _dropout(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return nn.Dropout(p) if p > 0 else nn.Identity()  # Identity returns x itself: no copy at p=0


def lora_scale(alpha, r, rslora=False):
    # rsLoRA (Kalajdzievski 2023): α/√r keeps the update's scale stable as r grows
    return alpha / math.sqrt(r) if rslora else alpha / r


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v

# -----------------------------------------------------------------------------
# LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Eq. (3):
#   h = W0 x + (α/r) · B A x,  A ~ kaiming (nn.Linear default), B = 0  =>  ΔW = 0 at step 0.

class LoRALinear(AdapterLinear):
    def __init__(self, base, r=8, alpha=16.0, dropout=0.0, rslora=False):
        super().__init__(base)
        self.r = _positive("r", r)
        self.scale = lora_scale(alpha, r, rslora)
        self.dropout = _dropout(dropout)
        self.lora_A = nn.Parameter(self._new(r, self.d_in))   # (r, d_in)
        self.lora_B = nn.Parameter(self._new(self.d_out, r))  # (d_out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def update(self, x):
        # scale the (.., r) intermediate, not the (.., d_out) output: r << d_out
        return F.linear(F.linear(self.dropout(x), self.lora_A) * self.scale, self.lora_B)

    def factors(self):
        return self.lora_B.float(), self.lora_A.float() * self.scale

# -----------------------------------------------------------------------------
# MultiLoRA: Wang, Lin, Zeng, Zhang 2023, arXiv 2311.11501, Sec. 3:
#   ΔW x = Σ_i g_i · s · B_i A_i x,  A_i and B_i kaiming, g_i = 0 at init (so ΔW = 0 at step 0).
# The n modules are one rank-(n·r) LoRA with a block-diagonal gate between A and B:
# stacked A (n·r, d_in), stacked B (d_out, n·r), gate repeated r times. Same FLOPs as LoRA n·r.

class MultiLoRALinear(AdapterLinear):
    def __init__(self, base, n=3, r=8, alpha=16.0, dropout=0.0, gate="scalar"):
        super().__init__(base)
        self.n, self.r = _positive("n", n), _positive("r", r)
        if gate not in ("scalar", "channel"):
            raise ValueError(f"multilora gate must be 'scalar' or 'channel', got {gate!r}")
        self.scale = alpha / r
        self.dropout = _dropout(dropout)
        self.lora_A = nn.Parameter(self._new(n * r, self.d_in))   # rows i*r:(i+1)*r hold A_i
        self.lora_B = nn.Parameter(self._new(self.d_out, n * r))  # cols i*r:(i+1)*r hold B_i
        with torch.no_grad():
            for i in range(n):  # kaiming per module: B_i's fan-in is r, not n·r
                nn.init.kaiming_uniform_(self.lora_A[i * r:(i + 1) * r], a=math.sqrt(5))
                nn.init.kaiming_uniform_(self.lora_B[:, i * r:(i + 1) * r], a=math.sqrt(5))
        # (our choice) one scalar per module, as the paper's figure; 'channel': one per output channel
        self.gate = nn.Parameter(self._new(n) if gate == "scalar" else self._new(n, self.d_out))
        nn.init.zeros_(self.gate)

    def update(self, x):
        h = F.linear(self.dropout(x), self.lora_A)                        # (.., n·r)
        if self.gate.dim() == 1:                                           # gates between A and B
            return F.linear(h * (self.gate * self.scale).repeat_interleave(self.r), self.lora_B)
        return F.linear(h * self.scale, self._gated_B())                   # gates folded into B

    def _gated_B(self):
        return self.lora_B * self.gate.repeat_interleave(self.r, dim=0).t()  # (d_out, n·r)

    def factors(self):
        if self.gate.dim() == 1:
            g = (self.gate.float() * self.scale).repeat_interleave(self.r)
            return self.lora_B.float(), self.lora_A.float() * g[:, None]
        return self._gated_B().float(), self.lora_A.float() * self.scale

# -----------------------------------------------------------------------------
# NOLA: Koohpayegani et al., ICLR 2024, arXiv 2310.02556, Eq. (2):
#   A = A0 + Σ_{j≤k} α_j A_j,  B = Σ_{j≤l} β_j B_j,  ΔW = s · B A,  only α, β trained.
# Bases A_j, B_j ~ U(-1, 1)/√k (resp. √l) come from a per-(layer, module, A/B) seed through a
# local torch.Generator on the CPU (bit-identical on every machine, never the global RNG).

def derive_seed(seed, *names):
    """Deterministic 63-bit seed for (global seed, module name, 'A'/'B')."""
    h = hashlib.sha256(":".join([str(seed), *names]).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def nola_bases(seed, count, shape, dtype=torch.float32, device="cpu", draw_on="cpu"):
    """(count, *shape) bases U(-1,1)/√count drawn from `seed` in fp32 by the `draw_on` device's
    generator, then cast and moved. 'cpu' (default) gives the same bases on every machine; 'cuda'
    is much faster on a GPU, but its bases differ from the CPU's: such an adapter needs a GPU."""
    g = torch.Generator(device=draw_on).manual_seed(seed)
    b = torch.empty(count, *shape, device=draw_on)
    b.uniform_(-1 / math.sqrt(count), 1 / math.sqrt(count), generator=g)
    return b.to(device=device, dtype=dtype)


class MixBases(torch.autograd.Function):
    """M = Σ_j c_j · basis_j, with the (count, *shape) bases regenerated from the seed in forward
    and again in backward instead of being kept (memory trick of the NOLA reference code)."""

    @staticmethod
    def forward(ctx, coef, seed, shape, draw_on="cpu"):
        ctx.seed, ctx.shape, ctx.count, ctx.draw_on = seed, shape, coef.numel(), draw_on
        basis = nola_bases(seed, coef.numel(), shape, coef.dtype, coef.device, draw_on)
        return (coef @ basis.view(coef.numel(), -1)).view(shape)

    @staticmethod
    def backward(ctx, grad):
        basis = nola_bases(ctx.seed, ctx.count, ctx.shape, grad.dtype, grad.device, ctx.draw_on)
        return basis.view(ctx.count, -1) @ grad.reshape(-1), None, None, None


class NOLALinear(AdapterLinear):
    def __init__(self, base, k=256, l=256, r=8, alpha=16.0, dropout=0.0,
                 seed=0, name="", stored_basis=False, basis_device="cpu"):
        super().__init__(base)
        self.k, self.l, self.r = _positive("k", k), _positive("l", l), _positive("r", r)
        if basis_device not in ("cpu", "cuda") or (basis_device == "cuda" and not torch.cuda.is_available()):
            raise ValueError(f"nola basis_device must be 'cpu' or (with a GPU) 'cuda', got {basis_device!r}")
        self.basis_device = basis_device  # (our choice) 'cpu': portable bases; 'cuda': fast on a GPU
        self.scale = alpha / r
        self.dropout = _dropout(dropout)
        self.stored_basis = stored_basis
        self.coef_A = nn.Parameter(torch.zeros_like(self._new(k)))  # α: zero, so A = A0 at step 0
        self.coef_B = nn.Parameter(torch.zeros_like(self._new(l)))  # β: zero, so B = 0:  ΔW = 0
        # the seeds are the checkpoint (with α, β): stored as buffers so they travel with the state
        self.register_buffer("seed_A", torch.tensor(derive_seed(seed, name, "A")))
        self.register_buffer("seed_B", torch.tensor(derive_seed(seed, name, "B")))
        self.register_load_state_dict_post_hook(lambda m, _: m.reset_derived())  # new seeds -> new bases
        self.reset_derived()

    def reset_derived(self):
        """(Re)build the frozen offset A0 and, with stored_basis, the bases from the seeds."""
        self.seeds = (int(self.seed_A), int(self.seed_B))  # python ints: no device sync per forward
        self._cache = None
        dev, dt = self.base.weight.device, self.base.weight.dtype
        if dev.type == "meta":  # shape-only model (parameter counting): nothing to draw
            self.register_buffer("A0", self._new(self.r, self.d_in), persistent=False)
            return
        A0, g = torch.empty(self.r, self.d_in), torch.Generator().manual_seed(self.seeds[0] ^ 0x5EED)
        nn.init.kaiming_uniform_(A0, a=math.sqrt(5), generator=g)  # the frozen offset: its own stream
        self.register_buffer("A0", A0.to(dev, dt), persistent=False)
        if self.stored_basis:
            draw = (dt, dev, self.basis_device)
            self.register_buffer("basis_A", nola_bases(self.seeds[0], self.k, (self.r, self.d_in), *draw),
                                 persistent=False)   # (k, r, d_in)
            self.register_buffer("basis_B", nola_bases(self.seeds[1], self.l, (self.d_out, self.r), *draw),
                                 persistent=False)   # (l, d_out, r)

    def build(self):
        """A (r, d_in) and B (d_out, r): k·r·d work once per forward, independent of the tokens."""
        dev = self.coef_A.device.type  # autocast changes the dtype A and B are built in: part of the key
        key = (self.coef_A._version, self.coef_B._version, self.coef_A.device, self.coef_A.dtype,
               torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev))
        if not torch.is_grad_enabled() and self._cache and self._cache[0] == key:
            return self._cache[1]  # inference (e.g. one forward per generated token): build once
        if self.stored_basis:
            A = torch.einsum("k,krd->rd", self.coef_A, self.basis_A)
            B = torch.einsum("l,lor->or", self.coef_B, self.basis_B)
        else:
            A = MixBases.apply(self.coef_A, self.seeds[0], (self.r, self.d_in), self.basis_device)
            B = MixBases.apply(self.coef_B, self.seeds[1], (self.d_out, self.r), self.basis_device)
        B, A = B, self.A0 + A
        self._cache = None if torch.is_grad_enabled() else (key, (B, A))
        return B, A

    def update(self, x):
        B, A = self.build()
        return F.linear(F.linear(self.dropout(x), A) * self.scale, B)  # then exactly LoRA

    def factors(self):
        B, A = self.build()
        return B.float(), A.float() * self.scale

# -----------------------------------------------------------------------------
# CAT: Prabhakar et al. 2024, "LoRA Soups", arXiv 2410.13025, Eq. (2):
#   ΔW = Σ_i w_i · s_i · B_i A_i  over N frozen skill LoRAs; one trainable w_i per adapter per module.
# Stored as one rank-Σr_i LoRA (A = concat(s_i A_i), B = concat(B_i)) with w between A and B, so the
# checkpoint is self-contained (no need for the skill files) and the algebra has no cross terms.

class CATLinear(AdapterLinear):
    def __init__(self, base, ranks, weights="plain", seed=0, name=""):
        super().__init__(base)
        if weights not in ("plain", "softmax"):
            raise ValueError(f"cat_weights must be 'plain' or 'softmax', got {weights!r}")
        self.ranks = [_positive("CAT adapter rank", int(r)) for r in ranks]
        R = sum(self.ranks)
        self.register_buffer("cat_A", torch.zeros_like(self._new(R, self.d_in)))   # rows: s_i A_i
        self.register_buffer("cat_B", torch.zeros_like(self._new(self.d_out, R)))  # cols: B_i
        self.register_buffer("which", torch.repeat_interleave(
            torch.arange(len(ranks)), torch.tensor(self.ranks)).to(self.base.weight.device),
            persistent=False)  # rank row -> adapter index
        self.softmax = weights == "softmax"
        if self.softmax:  # LoRA Soups code: convex weights, logits start from N(0, 1)
            g = torch.Generator().manual_seed(derive_seed(seed, name, "cat"))
            self.cat_w = nn.Parameter(torch.randn(len(ranks), generator=g).to(self._new(0)))
        else:             # (our choice, default) plain weights from 1: starts at the sum of skills
            self.cat_w = nn.Parameter(torch.ones_like(self._new(len(ranks))))

    def set_adapter(self, i, B, A, scale):
        with torch.no_grad():
            lo = sum(self.ranks[:i])
            self.cat_A[lo:lo + self.ranks[i]] = A * scale
            self.cat_B[:, lo:lo + self.ranks[i]] = B

    def weights(self):
        return self.cat_w.softmax(0) if self.softmax else self.cat_w

    def update(self, x):
        return F.linear(F.linear(x, self.cat_A) * self.weights()[self.which], self.cat_B)

    def factors(self):
        return self.cat_B.float(), self.cat_A.float() * self.weights().float()[self.which][:, None]

# -----------------------------------------------------------------------------
# public API

METHODS = ("lora", "multilora", "nola", "cat")
DEFAULTS = dict(r=8, alpha=16.0, dropout=0.0, rslora=False, n=3, gate="scalar", k=256, l=256, seed=0,
                stored_basis=False, basis_device="cpu", cat_adapters=None, cat_weights="plain", cat_ranks=None)
USES = {  # which options each method reads (others are accepted and ignored: train.py passes all)
    "lora": ("r", "alpha", "dropout", "rslora"),
    "multilora": ("n", "r", "alpha", "dropout", "gate"),
    "nola": ("k", "l", "r", "alpha", "dropout", "seed", "stored_basis", "basis_device"),
    "cat": ("cat_adapters", "cat_weights", "cat_ranks", "seed"),
}


def adapted_modules(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def _split(targets):
    return [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]


def _matches(name, target):
    """'attn.q' matches any module whose name ends with it; '*'/'?'/'[' make it a glob on the full name."""
    if any(c in target for c in "*?["):
        return fnmatchcase(name, target)
    return name == target or name.endswith("." + target)


def target_names(model, targets):
    """Names of the nn.Linear modules that `targets` ('attn.q,attn.v', or globs such as 'h.*.mlp.c_fc')
    select. Each target must match at least one Linear: a typo is refused, never silently skipped."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
               and not n.endswith(".base")]  # an adapter's frozen inner Linear is not a target of its own
    targets = _split(targets)
    if not targets:
        raise ValueError("adapter targets are empty: give module names like 'attn.q,attn.v'")
    for t in targets:
        if not any(_matches(n, t) for n in linears):
            raise ValueError(f"adapter target {t!r} matches no nn.Linear in the model (names look like "
                             f"{linears[0]!r}; give module names like 'attn.q,attn.v' or globs like 'h.*.mlp.c_fc')")
    return [n for n in linears if any(_matches(n, t) for t in targets)]


def _replace(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def add_adapters(model, method, targets="attn.q,attn.v", **opts):
    """Wrap every nn.Linear matching `targets` with `method`'s adapter, in place; freeze the base.
    Returns a one-line summary with trainable/total parameter counts."""
    if method not in METHODS:
        raise ValueError(f"unknown adapter method {method!r}: choose one of {', '.join(METHODS)}")
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown adapter option(s) {unknown}: known are {sorted(DEFAULTS)}")
    if adapted_modules(model):
        raise ValueError("model already has adapters: merge_and_unload(model) or start from a fresh base")
    o = {**DEFAULTS, **{k: v for k, v in opts.items() if v is not None}}
    cat_sources = None
    if method == "cat":
        cat_sources, targets = _load_cat_sources(model, o, targets)
    names = target_names(model, targets)
    if cat_sources and set(names) != set(cat_sources[0]):
        raise ValueError(f"the CAT skill adapters adapt {len(cat_sources[0])} modules, this model has "
                         f"{len(names)} matching {targets!r}: were they trained on another base?")
    _refuse_tied(model, names)
    model.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        if method == "lora":
            m = LoRALinear(base, o["r"], o["alpha"], o["dropout"], o["rslora"])
        elif method == "multilora":
            m = MultiLoRALinear(base, o["n"], o["r"], o["alpha"], o["dropout"], o["gate"])
        elif method == "nola":
            m = NOLALinear(base, o["k"], o["l"], o["r"], o["alpha"], o["dropout"], o["seed"], name,
                           bool(o["stored_basis"]), o["basis_device"])
        else:
            m = CATLinear(base, o["cat_ranks"], o["cat_weights"], o["seed"], name)
            for i, src in enumerate(cat_sources or []):
                m.set_adapter(i, *src[name])
        _replace(model, name, m)
    config = {"method": method, "targets": ",".join(_split(targets)),
              **{k: o[k] for k in USES[method]}}
    model._adapter_config = config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"{method}: {len(names)} modules ({config['targets']}), trainable {trainable:,} "
            f"/ total {total:,} params ({100 * trainable / total:.3f}%)")


def _refuse_tied(model, names):
    # GPT-2 ties lm_head to wte: merging ΔW would change the embedding too, and a merged state dict
    # would be silently re-tied on load. So tied weights are never adapted.
    owners = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(n.rpartition(".")[0])
    for name in names:
        others = [o for o in owners[id(model.get_submodule(name).weight)] if o != name]
        if others:
            raise ValueError(f"{name}.weight is tied to {others[0]}.weight (GPT-2 ties lm_head and wte): "
                             f"adapting it would change both; target other layers")


def _load_cat_sources(model, o, targets):
    """Read the skill LoRA checkpoints: [{module name: (B, A, scale)}], their common targets."""
    paths = o["cat_adapters"]
    if isinstance(paths, str):
        paths = _split(paths)
    if o["cat_ranks"] is not None:  # rebuild an empty CAT of known ranks, to be filled by a state dict
        return None, targets
    if not paths:
        raise ValueError("cat needs cat_adapters: a list of LoRA adapter checkpoints (train.py ckpt.pt files)")
    sources, ranks, first = [], [], None
    for p in paths:
        ck = load_adapter_checkpoint(p)
        cfg, st = ck["config"], ck["state"]
        if cfg["method"] != "lora":
            raise ValueError(f"cat composes LoRA adapters, but {p} holds a {cfg['method']} adapter "
                             f"(export it with to_lora first)")
        _check_base(model, ck, p)
        mods = sorted(k[:-len(".lora_A")] for k in st if k.endswith(".lora_A"))
        if first is None:
            first = (p, cfg["targets"], mods)
        elif mods != first[2]:
            raise ValueError(f"cat needs adapters with the same targets: {first[0]} adapts "
                             f"{first[1]!r} but {p} adapts {cfg['targets']!r}")
        s = lora_scale(cfg["alpha"], cfg["r"], cfg.get("rslora"))
        sources.append({m: (st[m + ".lora_B"].float(), st[m + ".lora_A"].float(), s) for m in mods})
        ranks.append(cfg["r"])
    o["cat_ranks"] = ranks
    o["cat_adapters"] = [str(p) for p in paths]
    return sources, first[1]


def adapter_config(model):
    """json-able dict: add_adapters(fresh_base, **adapter_config(model)) rebuilds the same adapters."""
    if not hasattr(model, "_adapter_config"):
        raise ValueError("model has no adapters (call add_adapters first)")
    return dict(model._adapter_config)


def adapter_state_dict(model, quantize_bits=None):
    """Adapter tensors only (KB, not MB). quantize_bits=4 stores NOLA coefficients as packed 4-bit
    symmetric max-abs codes + one fp32 scale per vector (the NOLA paper's compressed checkpoint)."""
    if quantize_bits not in (None, 4):
        raise ValueError(f"quantize_bits must be None or 4, got {quantize_bits!r}")
    sd = {}
    for name, m in adapted_modules(model).items():
        for k, v in m.state_dict().items():
            if k.startswith("base."):
                continue
            if quantize_bits and isinstance(m, NOLALinear) and k.startswith("coef_"):
                sd.update({f"{name}.{k}{s}": t for s, t in zip(("_q4", "_scale"), quantize4(v))})
            else:
                sd[f"{name}.{k}"] = v.detach().clone()
    return sd


def quantize4(c):
    """Symmetric 4-bit: codes -7..7 = round(7 c / max|c|), two codes per uint8."""
    scale = c.detach().float().abs().max().clamp_min(1e-12) / 7
    q = (c.detach().float() / scale).round().clamp(-7, 7).to(torch.uint8) + 8  # 1..15
    q = torch.cat([q, q.new_full((q.numel() % 2,), 8)])                          # pad to even
    return q[0::2] | (q[1::2] << 4), scale.reshape(1)


def dequantize4(packed, scale, numel):
    q = torch.stack([packed & 15, packed >> 4], 1).flatten()[:numel]
    return (q.float() - 8) * scale


def load_adapter_state_dict(model, sd):
    """Strict load into an adapted model; one-line errors on missing/extra keys or shapes."""
    mods = adapted_modules(model)
    if not mods:
        raise ValueError("model has no adapters: call add_adapters (or load_adapter_checkpoint) first")
    sd = dict(sd)
    for key in [k for k in sd if k.endswith("_q4")]:  # 4-bit NOLA coefficients -> float
        base = key[:-3]
        m = mods[base.rpartition(".")[0]]
        n = getattr(m, base.rpartition(".")[2]).numel()
        sd[base] = dequantize4(sd.pop(key), sd.pop(base + "_scale"), n)
    expected = {f"{n}.{k}": v for n, m in mods.items() for k, v in m.state_dict().items()
                if not k.startswith("base.")}
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or extra:
        raise ValueError(f"adapter state does not fit this model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]} (different method or targets?)")
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"adapter state shape mismatch at {k}: checkpoint {tuple(v.shape)} vs "
                             f"model {tuple(expected[k].shape)} (different base model size or rank?)")
    for name, m in mods.items():
        was = m.merged
        m.unmerge()
        own = {k[len(name) + 1:]: v for k, v in sd.items() if k.rpartition(".")[0] == name}
        m.load_state_dict(own, strict=False)  # keys were checked above; base.* stays as it is
        if was:
            m.merge()


def merge_adapters(model):
    for m in adapted_modules(model).values():
        m.merge()


def unmerge_adapters(model):
    for m in adapted_modules(model).values():
        m.unmerge()


def merge_and_unload(model):
    """Fold every ΔW into its base weight and put the plain nn.Linear back: a plain GPT again."""
    for name, m in adapted_modules(model).items():
        m.merge()
        _replace(model, name, m.base)
    model.__dict__.pop("_adapter_config", None)
    return model


def to_lora(model):
    """Replace every adapter by the plain LoRA with the same ΔW = B A (rank R = rank of factors(),
    scale 1): CAT becomes one LoRA of rank Σ r_i, MultiLoRA one of rank n·r, NOLA one of rank r."""
    for name, m in adapted_modules(model).items():
        B, A = (t.detach() for t in m.factors())
        m.unmerge()
        lora = LoRALinear(m.base, r=A.shape[0], alpha=float(A.shape[0]))
        with torch.no_grad():
            lora.lora_A.copy_(A)
            lora.lora_B.copy_(B)
        _replace(model, name, lora)
    r = lora.r  # the same for every module of one method
    model._adapter_config = {"method": "lora", "targets": model._adapter_config["targets"], "r": r,
                             "alpha": float(r), "dropout": 0.0, "rslora": False}
    return model


def _check_base(model, ck, path):
    fp = ck.get("base", {}).get("fingerprint")
    if fp and hasattr(model, "fingerprint") and not adapted_modules(model) and model.fingerprint() != fp:
        raise ValueError(f"{path} was trained on another base model (fingerprint {fp[:12]} != "
                         f"{model.fingerprint()[:12]}): load it onto the base it names ({ck['base'].get('path')})")


def load_adapter_checkpoint(path, model=None):
    """Read a train.py checkpoint's adapter. Returns {'config', 'state', 'base', 'model_args'}.
    With `model` (a plain base, no adapters yet): checks it is the base the adapter was trained on,
    adds the adapters and loads their state."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"adapter checkpoint {path} not found")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or "adapter" not in ck:
        raise ValueError(f"{path} holds no adapter (a full-model checkpoint? load it with model.load_model)")
    out = {"config": dict(ck["adapter"]["config"]), "state": ck["adapter"]["state"],
           "base": ck.get("base") or {}, "model_args": ck.get("model_args")}
    if model is not None:
        if adapted_modules(model):
            raise ValueError("load_adapter_checkpoint needs a plain base model (this one already has adapters)")
        _check_base(model, out, path)
        cfg = dict(out["config"])
        add_adapters(model, cfg.pop("method"), **cfg)
        load_adapter_state_dict(model, out["state"])
    return out

# -----------------------------------------------------------------------------
# merge baselines for the composition study (LoRA Soups compares CAT against these)

def lora_deltas(ckpt_or_path):
    """{module name: ΔW (fp32, base layout)} of a LoRA adapter checkpoint, without a model."""
    ck = load_adapter_checkpoint(ckpt_or_path) if isinstance(ckpt_or_path, (str, os.PathLike)) else ckpt_or_path
    cfg, st = ck["config"], ck["state"]
    if cfg["method"] != "lora":
        raise ValueError(f"lora_deltas reads LoRA adapters, got {cfg['method']} (use adapter_deltas on a model)")
    s = lora_scale(cfg["alpha"], cfg["r"], cfg.get("rslora"))
    return {k[:-7]: s * st[k[:-7] + ".lora_B"].float() @ v.float() for k, v in st.items() if k.endswith(".lora_A")}


def adapter_deltas(model):
    with torch.no_grad():
        return {name: m.delta_weight() for name, m in adapted_modules(model).items()}


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
        D = D * (flat.abs() >= thresh).view_as(D)                   # trim
        sign = torch.sign(D.sum(0))                                  # elect
        agree = (torch.sign(D) == sign) & (D != 0)
        out[name] = lam * (D * agree).sum(0) / agree.sum(0).clamp_min(1)  # disjoint mean
    return out


@torch.no_grad()
def apply_deltas(model, deltas):
    """W0 += ΔW (fp32, then cast) for each named nn.Linear of a plain model, in place."""
    _refuse_tied(model, list(deltas))
    for name, d in deltas.items():
        lin = model.get_submodule(name)
        if lin.weight.shape != d.shape:
            raise ValueError(f"ΔW for {name} has shape {tuple(d.shape)}, weight is {tuple(lin.weight.shape)}")
        lin.weight.copy_((lin.weight.float() + d.to(lin.weight.device)).to(lin.weight.dtype))
    return model
