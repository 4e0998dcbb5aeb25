"""
What the adapters cost, measured side by side in one process on one model and one batch:
training step time and peak memory for full fine-tuning, LoRA r=R, MultiLoRA n=3 r=R/3,
NOLA (regenerated and stored bases) and CAT, and inference time for the base model, an unmerged
LoRA and a merged one. Printed as ratios, with the targets each ratio should meet.

    python bench.py                  # default small model and GPT-2-small shape (~3 min on a shared CPU)
    python bench.py --models=small --steps=5
    python bench.py --peer           # this project's LoRA vs Hugging Face transformers + PEFT (test-only deps)
    python bench.py --spectra        # analyze.py on all q, v updates of a GPT-2-small shape (target <= 10 s)
    python bench.py --grad_checkpoint --block=512   # activation checkpointing: memory and time ratios
    python bench.py --generate       # GPT.generate vs Hugging Face generate, greedy and beam search

Timing: by default the process CPU time of one thread (--threads=1 --clock=cpu), which other
processes on a shared machine disturb far less than wall-clock time; ratios between methods are what
matter. Methods run their steps interleaved (round-robin, rotating the order), so drift hits them
alike; the table shows each method's best step. A second, identical LoRA row measures the noise.
--threads=2 --clock=wall measures what a user waits for on an idle machine.
Peak memory (CPU has no allocator statistics): bytes of all tensors alive at the worst moment of one
training step = persistent (weights, buffers, optimizer state) + the peak of tensors created during
the step (activations saved for backward, gradients, temporaries such as NOLA's regenerated bases),
tracked per storage by a TorchDispatchMode. It counts tensors, not allocator slack or Python objects.

--peer: the same LoRA training step in this project and in Hugging Face GPT2LMHeadModel + PEFT, on
identical weights (a random HF model copied in with model.convert_hf_gpt2), batch and precision,
steps interleaved in one process. Two batches: plain language modelling (a loss at every position)
and instruction tuning (the first ~70% of each row is prompt, without a loss). The pairing: ours
adapts attn.q and attn.v with rank r; PEFT adapts GPT-2's fused c_attn (q, k and v together, one A
and one B of 3C rows) with rank r, the closest PEFT allows (it cannot adapt slices of c_attn). Both
train 4·r·C parameters per layer.

--generate: GPT.generate against transformers' GPT2LMHeadModel.generate on the same random GPT-2-small
weights and prompts (left-padded batches of E2E-like prompt lengths, 30-60 tokens), greedy and beam
search with 10 beams, every call producing the same number of tokens (no stop token: transformers with
eos_token_id=None, both forced to max_new_tokens). Calls interleaved; the best of --steps per method;
the tokens of both compared. Interleaved with them, the floor: the matmuls every fp32 implementation
must run (the blocks' Linears on each real prompt token and each live row per step, the head once
per step), timed alone in both weight layouts; the faster one's share of HF's time is the best
ratio any implementation of the same math could reach.

--spectra: analyze.analyze() (SVD spectra and intruder dimensions) on synthetic updates of every q and
v matrix of a GPT-2-small shape, for four adapter methods and full fine-tuning; wall and CPU seconds.
"""

import argparse
import contextlib
import copy
import os
import sys
import tempfile
import time
import warnings
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import adapters
import analyze
from formats.huggingface import convert_hf_gpt2
from model import GPT, GPTConfig


class TensorMemory(TorchDispatchMode):
    """Peak bytes of storages created inside the `with` block and alive at the same time."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes):
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                # views and in-place/out= ops return an input's storage: not a new allocation
                if st.data_ptr() in inputs or getattr(st, "_bench_seen", False) or st.nbytes() == 0:
                    continue
                st._bench_seen = True
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(st, self._free, st.nbytes())
        return out


def nbytes(tensors):
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def model_loss(model, x, y):
    return model(x, y)[1]


class Run:
    """One training setup: a model, its optimizer, and a step function. loss(model, x, y) gives the
    step's loss; it runs under autocast (a context factory), the backward outside it, as in train.py."""

    def __init__(self, name, model, loss=model_loss, autocast=contextlib.nullcontext):
        self.name, self.model, self.times = name, model, []
        self.loss, self.autocast = loss, autocast
        params = [p for p in model.parameters() if p.requires_grad]
        # train.py's optimizer (CPU: foreach)
        self.opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        self.trainable = sum(p.numel() for p in params)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss(self.model, x, y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def timed_step(self, x, y, clock):
        t0 = clock()
        self.step(x, y)
        self.times.append(clock() - t0)

    def peak_bytes(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        persistent = nbytes(
            [
                *self.model.parameters(),
                *self.model.buffers(),
                *[v for s in self.opt.state.values() for v in s.values() if torch.is_tensor(v)],
            ]
        )
        with TensorMemory() as mem:
            self.step(x, y)
        return persistent + mem.peak, mem.peak


def shared_copy(base):
    """A copy of `base` whose (frozen) weights are the same tensors: adapters never write to them."""
    return copy.deepcopy(base, memo={id(p): p for p in base.parameters()})


def skill_checkpoints(base, n, r, targets, folder):
    """n random LoRA 'skills' saved as train.py adapter checkpoints, for CAT to compose."""
    paths = []
    for i in range(n):
        m = shared_copy(base)
        adapters.add_adapters(m, "lora", targets=targets, r=r)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
        paths.append(os.path.join(folder, f"skill{i}.pt"))
        adapters.save_adapter_checkpoint(paths[-1], m)
    return paths


def bench_model(label, cfg, batch, args):
    torch.manual_seed(0)
    base = GPT(cfg)
    base.requires_grad_(False)
    x = torch.randint(0, cfg.vocab_size, (batch, args.block))
    y = torch.randint(0, cfg.vocab_size, (batch, args.block))
    R, T = args.r, args.targets
    full = copy.deepcopy(base).requires_grad_(True)
    setups = {
        "full": None,
        f"lora r={R}": ("lora", dict(r=R)),
        f"multilora n=3 r={R // 3}": ("multilora", dict(n=3, r=R // 3)),
        f"nola k=l={args.nola_k} r={R}": ("nola", dict(k=args.nola_k, l=args.nola_k, r=R)),
        "nola stored": ("nola", dict(k=args.nola_k, l=args.nola_k, r=R, stored_basis=True)),
        f"cat 3 x lora r={R // 3}": ("cat", {}),
        f"lora r={R} again (noise control)": ("lora", dict(r=R)),
    }
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in setups.items():
            if spec is None:
                runs.append(Run(name, full))
                continue
            m = shared_copy(base)
            method, opts = spec
            if method == "cat":
                opts = dict(
                    skills=adapters.load_cat_skills(
                        skill_checkpoints(base, 3, R // 3, T, tmp), base
                    )[1]
                )
            adapters.add_adapters(m, method, targets=T, **opts)
            runs.append(Run(name, m))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for run in runs:  # warm-up: first-call allocations, optimizer state
        run.step(x, y)
    mem = {run.name: run.peak_bytes(x, y) for run in runs}
    for i in range(args.steps):
        # rotate: no method always follows full FT
        for run in runs[i % len(runs) :] + runs[: i % len(runs)]:
            run.timed_step(x, y, clock)

    # inference: base vs LoRA unmerged vs LoRA merged (wrapper kept: its forward is then base(x))
    lora = runs[1].model
    merged = copy.deepcopy(lora)
    with torch.no_grad():
        for p in merged.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    adapters.merge_adapters(merged)
    infer = {"base": base, "lora unmerged": lora, "lora merged": merged}
    itimes = {k: [] for k in infer}
    with torch.no_grad():
        for m in infer.values():
            m.eval()(x)
        for i in range(max(10, 2 * args.steps)):
            # rotate the order
            for k, m in list(infer.items())[i % 3 :] + list(infer.items())[: i % 3]:
                t0 = clock()
                m(x)
                itimes[k].append(clock() - t0)

    med = {r.name: min(r.times) for r in runs}
    full_t, lora_t = med["full"], med[runs[1].name]
    lora_mem = mem[runs[1].name][0]
    n_params = sum(p.numel() for p in base.parameters())
    print(
        f"\n## {label}: {n_params / 1e6:.1f}M params, batch {batch}x{args.block}, targets {T}, "
        f"{torch.get_num_threads()} thread(s), {args.clock} time, best of {args.steps} interleaved steps\n"
    )
    print(
        "| training step | trainable | ms/step | x full | x LoRA | peak MB | x LoRA | in-step MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        t, (pk, tr) = med[r.name], mem[r.name]
        print(
            f"| {r.name} | {r.trainable:,} | {1e3 * t:.0f} | {t / full_t:.2f} | {t / lora_t:.2f} | "
            f"{pk / 2**20:.0f} | {pk / lora_mem:.2f} | {tr / 2**20:.0f} |"
        )
    imed = {k: min(v) for k, v in itimes.items()}
    print("\n| inference (forward, no grad) | ms | x base |")
    print("|---|---:|---:|")
    for k, t in imed.items():
        print(f"| {k} | {1e3 * t:.1f} | {t / imed['base']:.3f} |")

    # NOLA's regenerated path draws every basis twice per step (forward and backward): a cost per
    # step, independent of the batch, so its share shrinks as tokens per step grow
    t0 = clock()
    for mod in adapters.adapted_modules(runs[3].model).values():
        for _ in range(2):
            adapters.nola_bases(mod.seeds[0], mod.k, (mod.r, mod.d_in))
            adapters.nola_bases(mod.seeds[1], mod.l, (mod.d_out, mod.r))
    regen = clock() - t0
    print(
        f"\nNOLA basis regeneration alone: {1e3 * regen:.0f} ms per step ({100 * regen / lora_t:.0f}% of the "
        f"LoRA step at {batch * args.block} tokens; the same at any batch size)"
    )

    names = [r.name for r in runs]
    checks = [
        ("LoRA step <= 0.70 x full FT", med[names[1]] / full_t, 0.70),
        ("MultiLoRA step <= 1.05 x LoRA", med[names[2]] / lora_t, 1.05),
        ("NOLA step <= 1.15 x LoRA", med[names[3]] / lora_t, 1.15),
        ("NOLA peak memory <= 1.05 x LoRA", mem[names[3]][0] / lora_mem, 1.05),
        ("NOLA stored step <= 1.15 x LoRA", med[names[4]] / lora_t, 1.15),
        ("NOLA stored peak memory <= 1.05 x LoRA", mem[names[4]][0] / lora_mem, 1.05),
    ]
    print("\n| target | measured | |")
    print("|---|---:|---|")
    for what, v, lim in checks:
        print(f"| {what} | {v:.2f} | {'ok' if v <= lim else 'MISSED'} |")
    d = imed["lora merged"] / imed["base"]
    print(
        f"| merged inference = base +-3% | {d:.3f} | {'ok' if abs(d - 1) <= 0.03 else 'MISSED'} |"
    )
    print(f"| (noise: LoRA vs the same LoRA again) | {med[names[-1]] / lora_t:.2f} | |")
    sys.stdout.flush()


def bench_grad_checkpoint(args):
    """Activation checkpointing (train.py --grad_checkpoint=True) on a full fine-tuning step of a
    GPT-2-small shape, without and with: the activation memory (what the forward keeps for the
    backward), the peak of all tensors the step creates beyond weights, gradients and optimizer
    state (activations, the backward's temporaries and recomputation), and the step time, steps
    interleaved."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=1024, vocab_size=50257)
    run = Run("full", GPT(cfg))
    B, T = args.gc_batch, args.block
    x = torch.randint(0, cfg.vocab_size, (B, T))
    y = torch.randint(0, cfg.vocab_size, (B, T))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    run.step(x, y)  # warm-up: optimizer state, first-call allocations
    held, peak, times = {}, {}, {False: [], True: []}
    for on in (False, True):
        run.model.grad_checkpoint = on
        run.opt.zero_grad(set_to_none=False)  # the gradients exist already: not counted as new
        with TensorMemory() as mem:
            loss = run.model(x, y)[1]
            held[on] = mem.live  # what the forward keeps for the backward
            loss.backward()
        peak[on] = mem.peak
    states = [v for s in run.opt.state.values() for v in s.values() if torch.is_tensor(v)]
    params = list(run.model.parameters())
    persistent = nbytes(params + [p.grad for p in params] + states)
    for i in range(args.steps):
        for on in (False, True) if i % 2 == 0 else (True, False):  # alternate who goes first
            run.model.grad_checkpoint = on
            t0 = clock()
            run.step(x, y)
            times[on].append(clock() - t0)
    best = {on: min(t) for on, t in times.items()}
    print(
        f"\n## activation checkpointing: GPT-2-small shape, full fine-tuning, batch {B}x{T}, fp32, "
        f"{torch.get_num_threads()} thread(s), {args.clock} time, best of {args.steps} interleaved "
        f"steps; weights, gradients and AdamW state: {persistent / 2**20:.0f} MB\n"
    )
    print("| grad_checkpoint | kept for backward MB | in-step peak MB | total peak MB | s/step |")
    print("|---|---:|---:|---:|---:|")
    for on in (False, True):
        print(
            f"| {on} | {held[on] / 2**20:.0f} | {peak[on] / 2**20:.0f} | "
            f"{(persistent + peak[on]) / 2**20:.0f} | {best[on]:.2f} |"
        )
    ratio = lambda d: d[True] / d[False]
    total = {on: persistent + peak[on] for on in peak}
    print(
        f"| ratio | {ratio(held):.2f} | {ratio(peak):.2f} | {ratio(total):.2f} | {ratio(best):.2f} |"
    )
    checks = [
        ("activation memory (kept for backward) <= 0.5 x without", ratio(held), 0.5),
        ("step time <= 1.4 x without", ratio(best), 1.4),
    ]
    print("\n| target | measured | |")
    print("|---|---:|---|")
    for what, v, lim in checks:
        print(f"| {what} | {v:.2f} | {'ok' if v <= lim else 'MISSED'} |")
    sys.stdout.flush()


# --- peer comparison: Hugging Face transformers + PEFT (test-only dependencies, requirements-dev.txt)
PEER_SHAPES = {  # name: (model shape, batch, T)
    "small": (
        dict(n_layer=4, n_head=4, n_embd=256, vocab_size=1024),
        32,
        128,
    ),  # train.py's default run
    "gpt2": (dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257), 2, 256),  # GPT-2-small
}
PEER_TARGETS = (
    ("instruction", "step", 0.77),
    ("instruction", "peak memory", 0.70),
    ("plain", "step", 1.00),
)


def full_head_loss(model, x, y):
    """The loss with the head at every position (as before answer-only heads): the 'before' rows."""
    logits = model(x)[0]
    return torch.nn.functional.cross_entropy(
        logits.view(-1, logits.size(-1)).float(), y.view(-1), ignore_index=-1
    )


def peer_loss(model, x, labels):
    return model(input_ids=x, labels=labels).loss


def peer_batches(vocab, B, T, prompt_share, seed=0):
    """{kind: (x, our targets, HF labels)} with the same loss positions. Ours: y[t] is the token after
    x[t], -1 where there is no loss. HF shifts internally: the logit at t is scored against labels[t + 1],
    -100 where there is no loss; so labels = x with the prompt masked, and our last position has no target."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T), generator=g)
    y = torch.cat([x[:, 1:], torch.full((B, 1), -1)], dim=1)
    batches = {"plain": (x, y, x.clone())}
    y, labels = y.clone(), x.clone()
    for b in range(B):  # prompt lengths spread around prompt_share * T
        # at least one loss position
        p = min(max(int(prompt_share * T) + (b % 5 - 2) * T // 32, 1), T - 1)
        y[b, : p - 1], labels[b, :p] = -1, -100
    batches["instruction"] = (x, y, labels)
    return batches


def peer_case(shape, B, T, dtype, kind, args):
    """One row: the peer's LoRA step, ours, and ours with the head at every position; full FT before/after."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        GPT2Config(
            n_positions=T,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=False,
            bos_token_id=None,
            eos_token_id=None,
            attn_implementation="sdpa",
            **shape,
        )
    )
    base = GPT(GPTConfig(block_size=T, **shape))
    base.load_state_dict(convert_hf_gpt2(hf.state_dict(), shape["n_layer"]))
    base.requires_grad_(False)
    peer = get_peft_model(
        hf,
        LoraConfig(
            task_type="CAUSAL_LM",
            target_modules=["c_attn"],
            r=args.r_peer,
            lora_alpha=2 * args.r_peer,
            lora_dropout=0.0,
            fan_in_fan_out=True,
        ),
    )
    ours, ours_full_head = shared_copy(base), shared_copy(base)
    for m in (ours, ours_full_head):
        adapters.add_adapters(
            m, "lora", targets="attn.q,attn.v", r=args.r_peer, alpha=2 * args.r_peer
        )
    autocast = (
        contextlib.nullcontext
        if dtype == "float32"
        else (lambda: torch.autocast("cpu", dtype=getattr(torch, dtype)))
    )
    x, y, labels = peer_batches(shape["vocab_size"], B, T, args.prompt_share)[kind]
    runs = [
        (Run("peer", peer.train(), peer_loss, autocast), labels),
        (Run("lora", ours.train(), model_loss, autocast), y),
        (Run("lora full head", ours_full_head.train(), full_head_loss, autocast), y),
    ]
    if args.peer_full:
        runs += [
            (
                Run("full", copy.deepcopy(base).requires_grad_(True).train(), model_loss, autocast),
                y,
            ),
            (
                Run(
                    "full full head",
                    copy.deepcopy(base).requires_grad_(True).train(),
                    full_head_loss,
                    autocast,
                ),
                y,
            ),
        ]
    # warm-up on identical weights: the losses must agree
    first = {run.name: run.step(x, t) for run, t in runs}
    mem = {run.name: run.peak_bytes(x, t)[0] for run, t in runs}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for i in range(args.steps):
        for run, t in runs[i % len(runs) :] + runs[: i % len(runs)]:
            run.timed_step(x, t, clock)
    best = {run.name: min(run.times) for run, _ in runs}
    dloss = max(abs(v - first["peer"]) for v in first.values())
    return best, mem, dloss, int((y != -1).sum())


def bench_peer(args):
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(
            f"peer comparison skipped: {e.name} is not installed (pip install -r requirements-dev.txt)"
        )
        return
    transformers.logging.set_verbosity_error()  # its notes on the random config are not results
    warnings.filterwarnings("ignore", category=FutureWarning)
    r = args.r_peer
    print(
        f"\n## This project's LoRA (attn.q, attn.v, r {r}) vs Hugging Face transformers {transformers.__version__} "
        f"+ PEFT {peft.__version__} LoRA (fused c_attn = q,k,v, r {r}); same weights and batch, "
        f"{torch.get_num_threads()} thread(s), {args.clock} time, best of {args.steps} interleaved steps\n"
    )
    print(
        "x peer: ours / peer (tok/s: peer time / ours). Head at every position: ours with the answer-only "
        "head / ours computing logits everywhere, for LoRA and for full fine-tuning. |dloss|: the largest "
        "first-step loss difference to the peer (identical weights).\n"
    )
    print(
        "| model | dtype | batch | loss positions | peer ms | ours ms | step x peer | tok/s x peer | peer peak MB "
        "| peak x peer | LoRA step, mem x full head | full FT step, mem x full head | max abs dloss |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for name in args.models.split(","):
        if name not in PEER_SHAPES:
            raise SystemExit(f"unknown model {name!r}: use small and/or gpt2")
        shape, B, T = PEER_SHAPES[name]
        for dtype in args.peer_dtypes.split(","):
            if dtype not in ("float32", "bfloat16"):
                raise SystemExit(f"--peer_dtypes: unknown {dtype!r}, use float32 and/or bfloat16")
            for kind in ("plain", "instruction"):
                best, mem, dloss, n = peer_case(shape, B, T, dtype, kind, args)
                step, peak = best["lora"] / best["peer"], mem["lora"] / mem["peer"]
                results.append((name, dtype, kind, step, peak))
                full = (
                    f"{best['full'] / best['full full head']:.2f}, {mem['full'] / mem['full full head']:.2f}"
                    if args.peer_full
                    else "-"
                )
                print(
                    f"| {name} {shape['n_layer']}x{shape['n_embd']} V{shape['vocab_size']} | {dtype} | {kind} {B}x{T} "
                    f"| {n} | {1e3 * best['peer']:.0f} | {1e3 * best['lora']:.0f} | {step:.2f} | {1 / step:.2f} "
                    f"| {mem['peer'] / 2**20:.0f} | {peak:.2f} "
                    f"| {best['lora'] / best['lora full head']:.2f}, {mem['lora'] / mem['lora full head']:.2f} "
                    f"| {full} | {dloss:.1e} |"
                )
                sys.stdout.flush()
    print("\n| target (ours / peer) | model | dtype | measured | |")
    print("|---|---|---|---:|---|")
    for kind, what, limit in PEER_TARGETS:
        for name, dtype, k, step, peak in results:
            if k == kind:
                v = step if what == "step" else peak
                met = 'met' if v <= limit else 'MISSED'
                print(f"| {kind} {what} <= {limit:.2f} | {name} | {dtype} | {v:.2f} | {met} |")


# --- decoding speed: GPT.generate vs Hugging Face generate (target <= 0.8x for greedy and beam search)
GENERATE_CASES = (  # (decoding, prompts per batch, beams)
    ("greedy", 1, 1),
    ("greedy", 8, 1),
    ("beam search", 1, 10),
    ("beam search", 4, 10),
)


def generate_prompts(B, vocab, seed=0):
    """B random prompts of 30-60 tokens (E2E meaning representations in GPT-2 tokens), left-padded:
    (B, T) ids and the attention mask, 0 on the padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(30, 61, (B,), generator=g).tolist()
    x, mask = (
        torch.zeros(B, max(lengths), dtype=torch.long),
        torch.zeros(B, max(lengths), dtype=torch.long),
    )
    for i, n in enumerate(lengths):
        x[i, x.size(1) - n :] = torch.randint(0, vocab, (n,), generator=g)
        mask[i, x.size(1) - n :] = 1
    return x, mask


def matmul_floor(model, layout, tokens, prompts, rows, n):
    """The matmuls that any fp32 implementation of this decoding must run, alone, the weights in
    one layout ("out,in": nn.Linear's rows; "in,out": transformers' Conv1D): every Linear of the
    blocks on each real prompt token (padding skipped), the head at each prompt's last one, then
    both on the `rows` live sequences (prompts x beams) at each of the n - 1 later steps. Returns a
    function that runs them in the model's order: the weights stream from memory as in decoding."""
    linears = [m for m in model.transformer.h.modules() if isinstance(m, torch.nn.Linear)]
    store = (lambda w: w.contiguous()) if layout == "out,in" else (lambda w: w.t().contiguous().t())
    weights = [(store(m.weight.detach()), m.bias) for m in linears]
    head = store(model.lm_head.weight.detach())
    x = {(M, d): torch.randn(M, d) for M in (tokens, rows) for d in {w.size(1) for w, _ in weights}}

    def run():
        for M, times, last in ((tokens, 1, prompts), (rows, n - 1, rows)):  # prefill, then steps
            for _ in range(times):
                for w, b in weights:
                    torch.nn.functional.linear(x[M, w.size(1)], w, b)
                torch.nn.functional.linear(x[M, head.size(1)][:last], head)

    return run


def bench_generate(args):
    try:
        import transformers
    except ImportError:
        print(
            "generate comparison skipped: transformers is not installed (pip install -r requirements-dev.txt)"
        )
        return
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # random GPT-2 small
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    ours = GPT(GPTConfig(block_size=1024, vocab_size=hf.config.vocab_size))
    ours.load_state_dict(convert_hf_gpt2(sd, hf.config.n_layer))
    ours.eval()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    n = args.gen_tokens
    print(
        f"\n## GPT.generate vs Hugging Face transformers {transformers.__version__} generate: random GPT-2 small "
        f"(same weights), {n} new tokens per prompt, {torch.get_num_threads()} thread(s), {args.clock} time, "
        f"best of {args.steps} interleaved calls\n"
    )
    print(
        "matmuls alone: the Linears of the 12 blocks on every real prompt token and then on every "
        "live row at each step, and the head once per step, timed alone in the faster of the two "
        "weight layouts (which); / HF: their share of HF's time, the best ratio any implementation "
        "doing the same fp32 math could reach\n"
    )
    print(
        "| decoding | prompts x beams | HF s | ours s | ours / HF | matmuls alone s | / HF "
        "| same tokens | target <= 0.80 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for what, B, K in GENERATE_CASES:
        x, mask = generate_prompts(B, hf.config.vocab_size)
        runs = {
            "hf": lambda x=x, mask=mask, K=K: hf.generate(
                x, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                num_beams=K, pad_token_id=0, eos_token_id=None,
            ),
            "ours": lambda x=x, mask=mask, K=K: ours.generate(
                x, n, temperature=0, num_beams=K, attention_mask=mask, compile=args.gen_compile
            ),
        }  # fmt: skip
        for layout in ("out,in", "in,out"):
            runs[layout] = matmul_floor(ours, layout, int(mask.sum()), B, B * K, n)
        times, outs = {k: [] for k in runs}, {}
        with torch.no_grad():
            for name, run in runs.items():
                t0 = time.perf_counter()
                outs[name] = run()  # warm-up, and the tokens to compare
                if name == "ours" and args.gen_compile:  # the compile, outside the timings
                    print(f"({what} {B} x {K}: first call {time.perf_counter() - t0:.0f} s wall)")
            for i in range(args.steps):
                for name in list(runs)[i % 4 :] + list(runs)[: i % 4]:  # rotate who goes first
                    t0 = clock()
                    runs[name]()
                    times[name].append(clock() - t0)
        hf_s, ours_s = min(times["hf"]), min(times["ours"])
        layout = min(("out,in", "in,out"), key=lambda k: min(times[k]))
        floor_s = min(times[layout])
        same = "yes" if torch.equal(outs["hf"], outs["ours"]) else "NO"
        met = "met" if ours_s / hf_s <= 0.8 else "MISSED"
        print(
            f"| {what} | {B} x {K} | {hf_s:.2f} | {ours_s:.2f} | {ours_s / hf_s:.2f} "
            f"| {floor_s:.2f} ({layout}) | {floor_s / hf_s:.2f} | {same} | {met} |"
        )
        sys.stdout.flush()


# --- analyze.py's speed: spectra and intruders of synthetic GPT-2-small-shaped updates (target <= 10 s)
def spectra_inputs(n_layer=12, d=768, rel=0.05, seed=0):
    """All q and v matrices of a GPT-2-small-shaped model; W0 with a power-law spectrum σ_j ∝ j^-0.6,
    like trained weights'. Four factored methods (random factors of ranks 8-24) and full fine-tuning
    (dense: noise plus four strong directions), each ΔW scaled to ||ΔW||_F = rel·||W0||_F.
    Returns (base, runs) as analyze.analyze() takes them."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    orth = lambda: torch.linalg.qr(rnd(d, d)).Q
    base = {
        f"transformer.h.{i}.{kind}": (orth() * torch.arange(1, d + 1).float() ** -0.6) @ orth().T
        for i in range(n_layer)
        for kind in ("attn.q", "attn.v")
    }
    fit = lambda W0, B, A: (B * (rel * W0.norm() / (B @ A).norm()), A)
    # multilora: 3 modules of rank 8; cat: 2 LoRAs
    ranks = {
        "lora": 8,
        "multilora": 24,
        "nola": 8,
        "cat": 16,
    }
    # per matrix
    params = {
        "lora": 8 * 2 * d,
        "multilora": 24 * 2 * d + 3,
        "nola": 64 + 64,
        "cat": 2,
    }
    runs = [
        {
            "label": m,
            "method": m,
            "trainable_params": len(base) * params[m],
            "updates": {n: fit(W0, rnd(d, r), rnd(r, d)) for n, W0 in base.items()},
        }
        for m, r in ranks.items()
    ]
    dense = {n: rnd(d, d) + rnd(d, 4) @ rnd(4, d) for n in base}
    runs.append(
        {
            "label": "full",
            "method": "full",
            "trainable_params": 124_439_808,  # GPT-2 small
            "updates": {n: dW * (rel * base[n].norm() / dW.norm()) for n, dW in dense.items()},
        }
    )
    return base, runs


def bench_spectra(n_layer=12, d=768, rel=0.05, seed=0, float64=False):
    """Times analyze.analyze() on spectra_inputs(); prints its table and the timing, returns its result."""
    base, runs = spectra_inputs(n_layer, d, rel, seed)
    result = analyze.analyze(base, runs, float64=float64)
    t = result["settings"]
    print(analyze.format_table(result))
    print(
        f"\nspectra: {len(base)} matrices ({n_layer} layers x q,v, {d}x{d}) x {len(runs)} methods, "
        f"|ΔW|/|W0| = {rel}, intruders included: {t['seconds']:.2f} s wall, {t['cpu_seconds']:.2f} s CPU, "
        f"{torch.get_num_threads()} thread(s) ({'float64' if float64 else 'float32'}; target <= 10 s)"
    )
    return result


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--models", default="small,gpt2", help="comma list of: small, gpt2")
    p.add_argument(
        "--steps", type=int, default=5, help="timed steps per method (after one warm-up)"
    )
    p.add_argument(
        "--r", type=int, default=12, help="LoRA rank R (MultiLoRA: n=3 of R/3; CAT: 3 LoRAs of R/3)"
    )
    p.add_argument("--nola_k", type=int, default=64, help="NOLA k = l (train.py's default)")
    p.add_argument("--block", type=int, default=128, help="sequence length T")
    p.add_argument("--batch_small", type=int, default=8, help="batch of the small model")
    p.add_argument("--batch_gpt2", type=int, default=1, help="batch of the GPT-2-small shape")
    p.add_argument("--targets", default="attn.q,attn.v", help="modules the adapters wrap")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--clock", default="cpu", choices=["cpu", "wall"], help="process CPU time or wall-clock"
    )
    p.add_argument(
        "--peer",
        action="store_true",
        help="compare LoRA with HF transformers + PEFT instead (small: B 32, T 128; gpt2: B 2, T 256)",
    )
    p.add_argument("--r_peer", type=int, default=8, help="--peer: LoRA rank of both")
    p.add_argument(
        "--peer_dtypes", default="float32,bfloat16", help="--peer: comma list (bfloat16 = autocast)"
    )
    p.add_argument(
        "--prompt_share", type=float, default=0.7, help="--peer: share of prompt tokens (no loss)"
    )
    p.add_argument(
        "--peer_full", type=int, default=1, help="--peer: 1 adds full fine-tuning before/after rows"
    )
    p.add_argument(
        "--spectra",
        action="store_true",
        help="time analyze.py's spectra and intruders on GPT-2-small-shaped updates instead (target 10 s)",
    )
    p.add_argument(
        "--spectra_float64", action="store_true", help="--spectra: decompositions in float64"
    )
    p.add_argument(
        "--grad_checkpoint",
        action="store_true",
        help="activation memory and step time of a GPT-2-small full fine-tuning step without and "
        "with activation checkpointing instead (--gc_batch x --block tokens)",
    )
    p.add_argument("--gc_batch", type=int, default=8, help="--grad_checkpoint: batch size")
    p.add_argument(
        "--generate",
        action="store_true",
        help="time GPT.generate against HF transformers' generate instead (greedy, 10 beams)",
    )
    p.add_argument("--gen_tokens", type=int, default=32, help="--generate: new tokens per prompt")
    p.add_argument(
        "--gen_compile",
        action="store_true",
        help="--generate: ours with compile=True (torch.compile of the one-token steps)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.r % 3:
        raise SystemExit(f"--r must be divisible by 3 (MultiLoRA n=3 r=R/3), got {args.r}")
    t0 = time.time()
    if args.spectra:
        bench_spectra(float64=args.spectra_float64)
        return
    if args.grad_checkpoint:
        bench_grad_checkpoint(args)
        return
    if args.generate:
        bench_generate(args)
        print(
            f"\n(total {time.time() - t0:.0f} s; CPU timings are noisy when other processes share the cores)"
        )
        return
    if args.peer:
        bench_peer(args)
        print(
            f"\n(total {time.time() - t0:.0f} s; CPU timings are noisy when other processes share the cores)"
        )
        return
    for name in args.models.split(","):
        if name == "small":  # train.py's default model on the world tokenizer (1024 tokens)
            cfg = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=1024)
            bench_model("default small model", cfg, args.batch_small, args)
        elif name == "gpt2":
            bench_model(
                "GPT-2-small shape",
                GPTConfig(block_size=1024, vocab_size=50257),
                args.batch_gpt2,
                args,
            )
        else:
            raise SystemExit(f"unknown model {name!r}: use small and/or gpt2")
    print(
        f"\n(total {time.time() - t0:.0f} s; CPU timings are noisy when other processes share the cores)"
    )


if __name__ == "__main__":
    main()
