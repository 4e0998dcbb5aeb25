"""
Low-rank adapters for GPT, one short class per paper (notes: docs/methods.md):

    LoRA       Hu et al. 2021                 ΔW = s · B A
    MultiLoRA  Wang et al. 2023 (2311.11501)  ΔW = Σ_i g_i · s · B_i A_i
    NOLA       Koohpayegani et al. ICLR 2024  ΔW = s · (Σ_j β_j B_j)(A0 + Σ_j α_j A_j)   (A0: below)
    CAT        Prabhakar et al. 2024          ΔW = Σ_i w_i · s_i · B_i A_i   (frozen skill LoRAs)

Every class wraps a frozen nn.Linear (W0 of shape (d_out, d_in), the torch layout) and computes
    h = base(x) + B (A x)          (training forward: ΔW is never materialised)
Shared mechanics (freezing, merge/unmerge in fp32, ΔW, seeds) live in AdapterLinear; a class says
what its (B, A) are. A class's keyword defaults are its method's defaults; train.py writes each one
out as <method>_<option> (lora_r, nola_k, ...), and a test keeps the two equal. Where a paper left a
choice open, the comment says "(our choice)" and an option offers both.

The file reads top to bottom: shared mechanics, the four methods, model surgery, checkpoints.
"""

import contextlib
import hashlib
import inspect
import math
from fnmatch import fnmatchcase

import torch
import torch.nn as nn
import torch.nn.functional as F

from formats.checkpoint import read_checkpoint, write_checkpoint

# -----------------------------------------------------------------------------
# shared mechanics


def derive_seed(seed, *names):
    """A deterministic 63-bit seed for (seed, *names), by hashing: every module and every use draws
    from its own stream, on a local generator, never from torch's global RNG. A run's seeds form a
    tree, each step one call of this function:
        run seed (nola_seed, cat_seed) -> one per module, from its name  (AdapterLinear.configure)
        NOLA module's seed -> seed_A, seed_B for its two sets of bases  (NOLALinear.__init__)
        seed_A -> the seed of its frozen offset A0                      (NOLALinear.draw_frozen)
    A NOLA checkpoint stores seed_A and seed_B, so A0 and the bases come back from them alone."""
    h = hashlib.sha256(":".join(map(str, (seed, *names))).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


class AdapterLinear(nn.Module):
    """base(x) + ΔW x for a frozen nn.Linear `base`, without forming ΔW. What a method provides:
        low_rank()  -> (B (d_out, R), A (R, d_in)) with ΔW = scale · B A, its B carrying the gates
                       (MultiLoRA) or the weights (CAT)
        scale       the s of ΔW = s · B A (LoRA's alpha / r); 1.0 unless the method sets it
        dropout     the module applied to x on the adapter branch; none unless the method sets it
        configure() (a classmethod) only if its modules need more than their own seed (CAT)
    Everything else (forward, merge, ΔW) is written once, here."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.d_out, self.d_in = base.weight.shape
        self.merged = False
        self.scale = 1.0  # a method sets its own scale and dropout (the class docstring)
        self.dropout = nn.Identity()

    @classmethod
    def configure(cls, names, config, skills=None):
        """(the config add_adapters records, {module name: keyword arguments of cls(base, ...)}) for
        the modules `names` of one run; `config` holds every option, defaults filled in. By default
        each module gets the run's options with its own seed (derive_seed), so no two draw alike."""
        if skills is not None:
            raise ValueError(f"skills are CAT's (adapters.load_cat_skills), not {cls.__name__}'s")
        if "seed" not in config:  # LoRA, MultiLoRA: their init draws from torch's RNG, in order
            return config, {name: config for name in names}
        return config, {
            name: {**config, "seed": derive_seed(config["seed"], name)} for name in names
        }

    def low_rank(self):
        """(B (d_out, R), A (R, d_in)) with ΔW = scale · B A: each method defines its own."""
        raise NotImplementedError(f"{type(self).__name__} must define low_rank() -> (B, A)")

    def _zeros(self, *shape):  # adapter tensors live where the base weight lives, in its dtype
        return torch.zeros(*shape, device=self.base.weight.device, dtype=self.base.weight.dtype)

    def update(self, x):  # scales the (.., R) intermediate, not the (.., d_out) output: R << d_out
        B, A = self.low_rank()
        return F.linear(F.linear(self.dropout(x), A) * self.scale, B)

    def factors(self):
        """(B (d_out, R), A (R, d_in)) in fp32 with scale and gates folded in, so ΔW = B @ A."""
        B, A = self.low_rank()
        return B.float(), A.float() * self.scale

    def delta_weight(self):
        B, A = self.factors()
        return B @ A  # (d_out, d_in), fp32, same layout as base.weight

    def forward(self, x):
        # merged: W0 + ΔW sits in base.weight, at the base model's cost (and no adapter grads)
        return self.base(x) if self.merged else self.base(x) + self.update(x)

    # merge/unmerge are explicit calls: .train()/.eval() never touch the weights (unlike loralib)
    @torch.no_grad()
    def merge(self, sign=+1):
        """W0 += ΔW, summed in fp32 and cast once (bf16-safe); sign=-1 takes it out (unmerge)."""
        if self.merged != (sign > 0):
            w = self.base.weight
            with torch.autocast(w.device.type, enabled=False):  # inside autocast B @ A runs in bf16
                w.copy_((w.float() + sign * self.delta_weight()).to(w.dtype))
            self.merged = sign > 0

    def unmerge(self):
        self.merge(-1)


def _dropout(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return nn.Dropout(p) if p > 0 else nn.Identity()  # Identity returns x itself: no copy at p=0


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def lora_scale(alpha, r, rslora=False):
    # rsLoRA (Kalajdzievski 2023): α/√r keeps the update's scale stable as r grows
    return alpha / math.sqrt(r) if rslora else alpha / r


# -----------------------------------------------------------------------------
# LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Eq. (3):
#   h = W0 x + (α/r) · B A x,  A ~ kaiming (nn.Linear default), B = 0  =>  ΔW = 0 at step 0.


class LoRALinear(AdapterLinear):
    def __init__(self, base, r=8, alpha=16.0, dropout=0.0, rslora=False):
        super().__init__(base)
        self.r = _positive("r", r)
        self.scale, self.dropout = lora_scale(alpha, r, rslora), _dropout(dropout)
        A = nn.init.kaiming_uniform_(self._zeros(r, self.d_in), a=math.sqrt(5))
        self.lora_A = nn.Parameter(A)
        self.lora_B = nn.Parameter(self._zeros(self.d_out, r))  # B = 0: ΔW = 0 at step 0

    def low_rank(self):
        return self.lora_B, self.lora_A


# -----------------------------------------------------------------------------
# MultiLoRA: Wang, Lin, Zeng, Zhang 2023, arXiv 2311.11501, Sec. 3:
#   ΔW x = Σ_i g_i · s · B_i A_i x,  A_i and B_i kaiming, g_i = 0 at init (so ΔW = 0 at step 0).
# The n modules are one rank-(n·r) LoRA whose B carries the gates: stacked A (n·r, d_in), stacked
# B (d_out, n·r), g_i on B_i's r columns. Same FLOPs as LoRA n·r, and LoRA's forward (AdapterLinear).


class MultiLoRALinear(AdapterLinear):
    # gate: 'scalar', one gate per module (our choice, the paper's figure) | 'channel', one per output
    def __init__(self, base, n=3, r=8, alpha=16.0, dropout=0.0, gate="scalar"):
        super().__init__(base)
        self.n, self.r = _positive("n", n), _positive("r", r)
        if gate not in ("scalar", "channel"):
            raise ValueError(f"multilora gate must be 'scalar' or 'channel', got {gate!r}")
        self.scale, self.dropout = alpha / r, _dropout(dropout)
        self.lora_A = nn.Parameter(self._zeros(n * r, self.d_in))  # rows i*r:(i+1)*r hold A_i
        self.lora_B = nn.Parameter(self._zeros(self.d_out, n * r))  # cols i*r:(i+1)*r hold B_i
        with torch.no_grad():
            for i in range(n):  # kaiming per module: B_i's fan-in is r, not n·r
                nn.init.kaiming_uniform_(self.lora_A[i * r : (i + 1) * r], a=math.sqrt(5))
                nn.init.kaiming_uniform_(self.lora_B[:, i * r : (i + 1) * r], a=math.sqrt(5))
        self.gate = nn.Parameter(self._zeros(n) if gate == "scalar" else self._zeros(n, self.d_out))

    def low_rank(self):
        # 'scalar': g_i (n,) on B_i's r columns; 'channel': g_i (n, d_out) on B_i's entries
        return self.lora_B * self.gate.t().repeat_interleave(self.r, dim=-1), self.lora_A


# -----------------------------------------------------------------------------
# NOLA: Koohpayegani et al., ICLR 2024, arXiv 2310.02556, Eq. (2):
#   A = Σ_{j≤k} α_j A_j,  B = Σ_{j≤l} β_j B_j,  ΔW = s · B A,  only α and β train.
# Bases A_j, B_j ~ U(-1, 1)/√k (resp. √l) come from a per-module seed through a local
# torch.Generator on the CPU (bit-identical on every machine, never the global RNG).
# One addition that is not in the paper, from the NOLA reference code (gpt/src/model_nola.py): a
# frozen Kaiming offset A0, A = A0 + Σ_j α_j A_j. Why: α = β = 0 at init makes A = B = 0, and
# then neither factor gets a gradient (∂ΔW/∂β_j = s·B_j A and ∂ΔW/∂α_j = s·B A_j are both 0):
# nothing would ever learn. With A0, A ≠ 0, so β learns first, as LoRA's B does, and ΔW = 0 at
# step 0 still holds.
# With B and A mixed, the forward is LoRA's (AdapterLinear.update).


def nola_bases(seed, count, shape, dtype=torch.float32, device="cpu", draw_on="cpu"):
    """(count, *shape) bases U(-1,1)/√count drawn from `seed` in fp32 by the `draw_on` device's
    generator, then cast and moved. 'cpu' (default) gives the same bases on every machine; 'cuda'
    is much faster on a GPU, but its bases differ from the CPU's: such an adapter needs a GPU."""
    g = torch.Generator(device=draw_on).manual_seed(seed)
    b = torch.empty(count, *shape, device=draw_on)
    b.uniform_(-1 / math.sqrt(count), 1 / math.sqrt(count), generator=g)
    return b.to(device=device, dtype=dtype)


class NOLALinear(AdapterLinear):
    # k and l: the numbers of bases mixed into A and into B, the paper's letters (options nola_k, nola_l)
    def __init__(
        self,
        base,
        k=64,
        l=64,  # noqa: E741 (the paper's letter, and the option's name in configs and checkpoints)
        r=8,
        alpha=16.0,
        dropout=0.0,
        seed=0,
        stored_basis=False,  # (our choice) keep the bases in memory, or regenerate them (MixBases)
        basis_device="cpu",  # draw the bases on 'cpu' (the same on every machine) or 'cuda' (fast)
    ):
        super().__init__(base)
        self.k, self.l, self.r = _positive("k", k), _positive("l", l), _positive("r", r)
        if basis_device not in ("cpu", "cuda") or (
            basis_device == "cuda" and not torch.cuda.is_available()
        ):
            raise ValueError(
                f"nola basis_device must be 'cpu' or (with a GPU) 'cuda', got {basis_device!r}"
            )
        self.scale, self.dropout = alpha / r, _dropout(dropout)
        self.stored_basis, self.basis_device = stored_basis, basis_device
        self.coef_A = nn.Parameter(self._zeros(self.k))  # α = 0
        self.coef_B = nn.Parameter(self._zeros(self.l))  # β = 0: ΔW = 0 at step 0
        # the seeds and the coefficients are the whole checkpoint: the seeds are buffers, so they
        # sit in the state dict, and loading other seeds draws the matching bases again
        self.register_buffer("seed_A", torch.tensor(derive_seed(seed, "A")))
        self.register_buffer("seed_B", torch.tensor(derive_seed(seed, "B")))
        self.register_load_state_dict_post_hook(lambda module, _: module.draw_frozen())
        self.draw_frozen()

    def draw_frozen(self):
        """The frozen tensors from the seeds: the offset A0 and (stored_basis) the bases."""
        self.seeds = int(self.seed_A), int(self.seed_B)  # ints: no device sync per forward
        where = dict(device=self.base.weight.device, dtype=self.base.weight.dtype)
        g = torch.Generator().manual_seed(derive_seed(self.seeds[0], "A0"))
        A0 = nn.init.kaiming_uniform_(torch.empty(self.r, self.d_in), a=math.sqrt(5), generator=g)
        self.register_buffer("A0", A0.to(**where), persistent=False)
        if self.stored_basis:  # (k, r, d_in) and (l, d_out, r), drawn as MixBases draws them
            for name, seed, count, shape in (
                ("basis_A", self.seeds[0], self.k, (self.r, self.d_in)),
                ("basis_B", self.seeds[1], self.l, (self.d_out, self.r)),
            ):
                basis = nola_bases(seed, count, shape, **where, draw_on=self.basis_device)
                self.register_buffer(name, basis, persistent=False)

    def low_rank(self):
        """(B, A0 + A), mixed in fp32 outside autocast: k·r·d work per forward, whatever the tokens."""
        with torch.autocast(self.coef_A.device.type, enabled=False):
            if self.stored_basis:  # the definition as written: A = Σ_j α_j A_j, B = Σ_j β_j B_j
                A = torch.einsum("k,krd->rd", self.coef_A, self.basis_A)
                B = torch.einsum("l,lor->or", self.coef_B, self.basis_B)
            else:  # the same sums, the bases drawn again from the seeds instead of kept (the default)
                A = MixBases.apply(
                    self.coef_A, self.seeds[0], (self.r, self.d_in), self.basis_device
                )
                B = MixBases.apply(
                    self.coef_B, self.seeds[1], (self.d_out, self.r), self.basis_device
                )
        return B, self.A0 + A


class MixBases(torch.autograd.Function):
    """M = Σ_j c_j · basis_j, the bases regenerated from the seed in forward and again in backward.
    Why a Function: plain autograd (the einsum of NOLALinear.low_rank) keeps the (count, *shape)
    bases from the forward until the backward, count times the size of the factor M itself, for
    every adapted module at once. The gradient dM/dc_j = basis_j needs only the bases again, which
    the seed redraws (the NOLA reference code's memory trick): more compute, no stored bases. This
    is the default path (stored_basis=False); the einsum is the definition it computes."""

    @staticmethod
    def forward(ctx, coef, seed, shape, draw_on="cpu"):
        ctx.seed, ctx.shape, ctx.count, ctx.draw_on = seed, shape, coef.numel(), draw_on
        basis = nola_bases(seed, coef.numel(), shape, coef.dtype, coef.device, draw_on)
        return (coef @ basis.view(coef.numel(), -1)).view(shape)  # (count,) @ (count, r·d)

    @staticmethod
    def backward(ctx, grad):  # d loss / d c_j = <basis_j, grad>; seed, shape, draw_on get none
        basis = nola_bases(ctx.seed, ctx.count, ctx.shape, grad.dtype, grad.device, ctx.draw_on)
        return basis.view(ctx.count, -1) @ grad.reshape(-1), None, None, None


# -----------------------------------------------------------------------------
# CAT: Prabhakar et al. 2024, "LoRA Soups", arXiv 2410.13025, Eq. (2):
#   ΔW = Σ_i w_i · s_i · B_i A_i  over N frozen skill LoRAs; one trainable w_i per adapter per module.
# One rank-Σr_i LoRA: buffers concat(s_i A_i) and concat(B_i), B = concat(w_i B_i) per forward. The
# checkpoint is self-contained (no need for the skill files) and the algebra has no cross terms.
# The skill LoRAs are read by load_cat_skills (below) and handed to each module by configure().


class CATLinear(AdapterLinear):
    # weights: 'plain' (start at 1, the sum of the skills; our choice) | 'softmax' (the LoRA Soups code)
    # seed: of the softmax weights' random start. ranks: the skills' ranks (their LoRAs fix them, so no
    # default). skills, keyword-only and not an option: this module's [(B_i, A_i, s_i)], absent when
    # the adapter is rebuilt from a checkpoint's config (its tensors are loaded next).
    def __init__(self, base, ranks, weights="plain", seed=0, *, skills=None):
        super().__init__(base)  # the base's scale 1 and no dropout: the s_i sit in cat_A
        if weights not in ("plain", "softmax"):
            raise ValueError(f"cat weights must be 'plain' or 'softmax', got {weights!r}")
        self.ranks = [_positive("CAT adapter rank", int(r)) for r in ranks]
        self.register_buffer("cat_A", self._zeros(sum(self.ranks), self.d_in))  # rows: s_i A_i
        self.register_buffer("cat_B", self._zeros(self.d_out, sum(self.ranks)))  # cols: B_i
        # which[row] = the skill i that row of cat_A (column of cat_B) belongs to
        which = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(self.ranks))
        self.register_buffer("which", which.to(self.base.weight.device), persistent=False)
        self.softmax = weights == "softmax"
        if self.softmax:  # LoRA Soups code: convex weights, logits start from N(0, 1)
            logits = torch.randn(len(ranks), generator=torch.Generator().manual_seed(seed))
            w = logits.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
            self.cat_w = nn.Parameter(w)
        else:  # (our choice, default) plain weights from 1: starts at the sum of skills
            self.cat_w = nn.Parameter(self._zeros(len(ranks)) + 1)
        with torch.no_grad():
            for i, (B, A, s) in enumerate(skills or []):
                lo = sum(self.ranks[:i])
                self.cat_A[lo : lo + self.ranks[i]] = A * s
                self.cat_B[:, lo : lo + self.ranks[i]] = B

    @classmethod
    def configure(cls, names, config, skills=None):
        """Each module its slice of the skills (load_cat_skills), the run's ranks from them; without
        skills, a checkpoint's config rebuilds the modules empty from its ranks."""
        if skills is None:
            if "ranks" not in config:
                raise ValueError(
                    "cat needs its skill LoRAs: "
                    "add_adapters(model, 'cat', *adapters.load_cat_skills(paths, model))"
                )
            return super().configure(names, config)
        if set(names) != set(skills):
            raise ValueError(
                f"the CAT skill adapters adapt {len(skills)} modules, this model has {len(names)} "
                f"matching the targets: were they trained on another base?"
            )
        ranks = [A.shape[0] for _, A, _ in skills[names[0]]]
        config, per_module = super().configure(names, {**config, "ranks": ranks})
        return config, {name: {**kw, "skills": skills[name]} for name, kw in per_module.items()}

    def weights(self):
        return self.cat_w.softmax(0) if self.softmax else self.cat_w

    def low_rank(self):  # w_i on B_i's columns; the skills' own scales s_i are already in cat_A
        return self.cat_B * self.weights()[self.which], self.cat_A


def load_cat_skills(paths, model):
    """The LoRA checkpoints CAT composes ("a.pt,b.pt" or a list), read before add_adapters and checked against
    each other and the base `model`. Returns (their targets, {module name: [(B, A, scale) of each skill]})."""
    paths = [
        p.strip() for p in (paths.split(",") if isinstance(paths, str) else paths) if p.strip()
    ]
    if not paths:
        raise ValueError(
            "cat needs cat_adapters: a list of LoRA adapter checkpoints (train.py ckpt.pt files)"
        )
    skills, first = {}, None
    for p in paths:
        ck = load_adapter_checkpoint(p)
        cfg, st = ck["config"], ck["state"]
        if cfg["method"] != "lora":
            raise ValueError(
                f"cat composes LoRA adapters, but {p} holds a {cfg['method']} adapter "
                f"(export it with to_lora first)"
            )
        check_base(model, ck, p)
        mods = sorted(k[: -len(".lora_A")] for k in st if k.endswith(".lora_A"))
        first = first or (p, cfg["targets"], mods)
        if mods != first[2]:
            raise ValueError(
                f"cat needs adapters with the same targets: {first[0]} adapts "
                f"{first[1]!r} but {p} adapts {cfg['targets']!r}"
            )
        scale = lora_scale(cfg["alpha"], cfg["r"], cfg.get("rslora"))
        for m in mods:
            skills.setdefault(m, []).append(
                (st[m + ".lora_B"].float(), st[m + ".lora_A"].float(), scale)
            )
    return first[1], skills


# -----------------------------------------------------------------------------
# the methods and their options: a class's keyword defaults, written out in train.py as
# <method>_<option> (a test keeps the two equal)

METHODS = {"lora": LoRALinear, "multilora": MultiLoRALinear, "nola": NOLALinear, "cat": CATLinear}


def method_options(method):
    """The names of the method's options: its class's arguments but `base` and the keyword-only
    ones, which carry tensors, not settings (CAT's skills)."""
    params = list(inspect.signature(METHODS[method]).parameters.values())[1:]  # all but `base`
    return [p.name for p in params if p.kind is not p.KEYWORD_ONLY]


def method_defaults(method):
    """{option: default} from the class's signature (CAT's ranks has none: its skill LoRAs fix it)."""
    params = inspect.signature(METHODS[method]).parameters
    return {
        a: params[a].default
        for a in method_options(method)
        if params[a].default is not params[a].empty
    }


# -----------------------------------------------------------------------------
# model surgery


def linear_names(model, patterns):
    """Names of the nn.Linear modules that `patterns` select ('attn.q,attn.v' or a list): a pattern, glob
    or not ('h.*.mlp.c_fc'), matches a full name or its tail after a dot. Every pattern must match a
    Linear: a typo is refused, never silently skipped. Adapters and analyze.py pick matrices with it."""
    # an adapter's frozen inner Linear is not a target of its own
    linears = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith(".base")
    ]
    patterns = [
        p.strip()
        for p in (patterns.split(",") if isinstance(patterns, str) else patterns)
        if p.strip()
    ]
    if not patterns:
        raise ValueError("targets are empty: give module names like 'attn.q,attn.v'")
    matches = lambda name, p: fnmatchcase(name, p) or fnmatchcase(name, "*." + p)
    for p in patterns:
        if not any(matches(n, p) for n in linears):
            raise ValueError(
                f"target {p!r} matches no nn.Linear in the model (names look like {linears[0]!r}; "
                f"give module names like 'attn.q,attn.v' or globs like 'h.*.mlp.c_fc')"
            )
    return [n for n in linears if any(matches(n, p) for p in patterns)]


def adapted_modules(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def refuse_tied(model, names):
    # GPT-2 ties lm_head to wte: merging ΔW would change the embedding too, and a merged state dict
    # would be silently re-tied on load. So tied weights are never adapted.
    params = list(model.named_parameters(remove_duplicate=False))
    for name in names:
        weight = model.get_submodule(name).weight
        others = [n for n, p in params if p is weight and n != name + ".weight"]
        if others:
            raise ValueError(
                f"{name}.weight is tied to {others[0]} (GPT-2 ties lm_head and wte): "
                f"adapting it would change both; target other layers"
            )


def _replace(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def add_adapters(model, method, targets="attn.q,attn.v", skills=None, **options):
    """Wrap every Linear matching `targets` in METHODS[method](base, **options), in place; freeze the rest.
    CAT composes `skills` (read by load_cat_skills) or is rebuilt empty from a checkpoint's `ranks`.
    Returns a one-line summary."""
    if method not in METHODS:
        raise ValueError(f"unknown adapter method {method!r}: choose one of {', '.join(METHODS)}")
    known = method_options(method)
    if set(options) - set(known):
        raise ValueError(
            f"unknown {method} option(s) {sorted(set(options) - set(known))}: known are {known}"
        )
    if adapted_modules(model):
        raise ValueError(
            "model already has adapters: merge_and_unload(model) or start from a fresh base"
        )
    targets = [
        t.strip()
        for t in (targets.split(",") if isinstance(targets, str) else targets)
        if t.strip()
    ]
    names = linear_names(model, targets)
    cls = METHODS[method]
    config, per_module = cls.configure(names, {**method_defaults(method), **options}, skills)
    refuse_tied(model, names)
    model.requires_grad_(False)
    for name in names:
        _replace(model, name, cls(model.get_submodule(name), **per_module[name]))
    model._adapter_config = {"method": method, "targets": ",".join(targets), **config}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (
        f"{method}: {len(names)} modules ({model._adapter_config['targets']}), trainable {trainable:,} "
        f"/ total {total:,} params ({100 * trainable / total:.3f}%)"
    )


def merge_adapters(model):
    for m in adapted_modules(model).values():
        m.merge()


def unmerge_adapters(model):
    for m in adapted_modules(model).values():
        m.unmerge()


@contextlib.contextmanager
def merged(model):
    """Evaluate at the base model's cost: every ΔW sits in its W0 inside the block. On exit W0 is restored
    from a copy, bit-exact (subtracting ΔW again would leave fp32 rounding in it)."""
    w0 = {
        m: m.base.weight.detach().clone() for m in adapted_modules(model).values() if not m.merged
    }
    try:
        merge_adapters(model)
        yield model
    finally:
        with torch.no_grad():
            for m, w in w0.items():
                m.base.weight.copy_(w)
                m.merged = False


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
    if not adapted_modules(model):
        raise ValueError("model has no adapters: nothing to rewrite as LoRA")
    for name, m in adapted_modules(model).items():
        B, A = (t.detach() for t in m.factors())
        m.unmerge()
        lora = LoRALinear(m.base, r=A.shape[0], alpha=float(A.shape[0]))
        # copies, in the base's dtype
        lora.load_state_dict({"lora_A": A, "lora_B": B}, strict=False)
        _replace(model, name, lora)
    # one r for all modules
    model._adapter_config = {
        "method": "lora",
        "targets": model._adapter_config["targets"],
        "r": lora.r,
        "alpha": float(lora.r),
        "dropout": 0.0,
        "rslora": False,
    }
    return model


# -----------------------------------------------------------------------------
# adapter state and checkpoints: {'adapter': {'config', 'state'}, 'base': {'path', 'fingerprint'}, 'model_args'}


def adapter_config(model):
    """json-able dict: add_adapters(fresh_base, **adapter_config(model)) rebuilds the same adapters."""
    if not hasattr(model, "_adapter_config"):
        raise ValueError("model has no adapters (call add_adapters first)")
    return dict(model._adapter_config)


def adapter_state_dict(model):
    """Adapter tensors only (KB, not MB); NOLA's: two seeds and k + l coefficients per module."""
    return {
        f"{name}.{k}": v.detach().clone()
        for name, m in adapted_modules(model).items()
        for k, v in m.state_dict().items()
        if not k.startswith("base.")
    }


def load_adapter_state_dict(model, sd):
    """Strict load into an adapted model; one-line errors on missing/extra keys or shapes."""
    expected = adapter_state_dict(model)
    if not expected:
        raise ValueError(
            "model has no adapters: call add_adapters (or load_adapter_checkpoint) first"
        )
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or extra:
        raise ValueError(
            f"adapter state does not fit this model: missing {missing[:3]}, "
            f"unexpected {extra[:3]} (different method or targets?)"
        )
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise ValueError(
                f"adapter state shape mismatch at {k}: checkpoint {tuple(v.shape)} vs "
                f"model {tuple(expected[k].shape)} (different base model size or rank?)"
            )
    was_merged = [m for m in adapted_modules(model).values() if m.merged]
    unmerge_adapters(model)  # new factors must not be subtracted from a W0 that holds the old ones
    # keys and shapes checked above; the base stays as it is
    model.load_state_dict(sd, strict=False)
    for m in was_merged:
        m.merge()


def save_adapter_checkpoint(path, model, base=None, **extra):
    """The one adapter checkpoint format, written atomically: the adapter, the base it belongs to
    ({'path', 'fingerprint'}), model_args, and whatever `extra` train.py adds (optimizer, schedule)."""
    ck = {
        "model_args": vars(model.config).copy() if hasattr(model, "config") else None,
        **extra,
        "base": base or {},
        "adapter": {"config": adapter_config(model), "state": adapter_state_dict(model)},
    }
    write_checkpoint(ck, path)
    return path


def check_base(model, ck, path):
    """Refuse an adapter checkpoint `ck` read from `path` that names another base than the plain `model`."""
    fp = ck["base"].get("fingerprint")
    if (
        fp
        and hasattr(model, "fingerprint")
        and not adapted_modules(model)
        and model.fingerprint() != fp
    ):
        raise ValueError(
            f"{path} was trained on another base model (fingerprint {fp[:12]} != "
            f"{model.fingerprint()[:12]}): load it onto the base it names ({ck['base'].get('path')})"
        )


def load_adapter_checkpoint(path, model=None):
    """Read a train.py checkpoint's adapter: {'config', 'state', 'base', 'model_args'}. With `model` (a plain
    base, no adapters yet): checks it is the base the adapter was trained on, adds the adapters, loads them."""
    ck = read_checkpoint(path)  # one-line errors for a missing or unreadable file
    if not isinstance(ck.get("adapter"), dict) or not {"config", "state"} <= set(ck["adapter"]):
        raise ValueError(
            f"{path} holds no adapter (a full-model checkpoint? load it with model.load_model)"
        )
    out = {**ck["adapter"], "base": ck.get("base") or {}, "model_args": ck.get("model_args")}
    if model is not None:
        if adapted_modules(model):
            raise ValueError(
                "load_adapter_checkpoint needs a plain base model (this one already has adapters)"
            )
        check_base(model, out, path)
        add_adapters(model, **out["config"])
        load_adapter_state_dict(model, out["state"])
    return out
