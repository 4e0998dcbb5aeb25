"""
What did fine-tuning change? Singular-value spectra of weight updates ΔW, and intruder dimensions,
for full fine-tuning and every adapter method (docs: methods.md, "Looking at weight updates").

    python analyze.py --base=out/base/ckpt.pt out/lora_mixture/ckpt.pt out/multilora_mixture/ckpt.pt \
        out/nola_mixture/ckpt.pt out/finetune_mixture/ckpt.pt --out=out/spectra
    options: --matrices=attn.q,attn.v (names or suffixes; default: what the adapters adapted)
             --float64  --top_k=10  --eps=0.3,0.5,0.7  --threads=N
    python analyze.py --bench        # timing on synthetic GPT-2-small-shaped updates

Writes OUT.json (every number), OUT.png (OUT.txt, a text chart, when matplotlib is missing) and
prints a table. --base is a train.py checkpoint or a GPT-2 directory; every result must record
that base's fingerprint (train.py does), so updates are never measured against the wrong W0.

Two lenses on the same matrices:
1. MultiLoRA (Wang et al. 2023, Fig. 1): the SVD of LoRA's ΔW is dominated by a few top singular
   vectors, full fine-tuning's spreads over many, MultiLoRA's is flatter ("more democratic").
   Numbers: σ_k/σ_1, cumulative energy Σ_{j<=k} σ_j² / Σ σ², the top singular value's energy share,
   entropy effective rank exp(H(p)) with p_k = σ_k / Σ σ (Roy & Vetterli 2007), and the smallest
   rank holding 90% of the energy.
2. Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
   Equivalence"): a top-k LEFT singular vector u of W0 + ΔW is an intruder at threshold ε if
   max_j |cos(u, u0_j)| < ε over ALL left singular vectors u0_j of W0 (the paper's choice of U).
"""
import argparse
import copy
import json
import math
import os
import re
import sys
import time

import torch

EPS = (0.3, 0.5, 0.7)   # intruder thresholds
TOP_K = 10              # how many top singular vectors of W0 + ΔW are checked for intruders
ENERGY = 0.9            # "rank holding 90% of the energy"

# ----------------------------------------------------------------------------------------------
# numerics: small pure functions on tensors


def check_update(*tensors, name="ΔW"):
    """One-line errors for updates there is nothing sensible to say about."""
    for t in tensors:
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): nothing to analyse; check the checkpoint")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} has NaN/inf entries: the run diverged or the checkpoint is corrupt")
        if not t.any():
            raise ValueError(f"{name} is all zeros: this matrix was not trained (adapter still at its init?)")


def singular_values(dW, dtype=torch.float32, name="ΔW"):
    """σ of a dense ΔW (d_out, d_in), descending: an O(d³) SVD."""
    check_update(dW, name=name)
    return torch.linalg.svdvals(dW.to(dtype))


def singular_values_factored(B, A, dtype=torch.float32, name="ΔW"):
    """σ of ΔW = B @ A, B (d_out, r), A (r, d_in), without forming ΔW. With B = Q_B R_B and
    Aᵀ = Q_A R_A, ΔW = Q_B (R_B R_Aᵀ) Q_Aᵀ and the Q's have orthonormal columns, so ΔW has the
    singular values of the (r, r) core: O((d_in + d_out) r²) instead of O(d_out d_in min(d))."""
    check_update(B, A, name=name)
    R_B = torch.linalg.qr(B.to(dtype)).R      # (min(d_out, r), r)
    R_A = torch.linalg.qr(A.to(dtype).T).R    # (min(d_in, r), r)
    s = torch.linalg.svdvals(R_B @ R_A.T)
    if not s.any():
        raise ValueError(f"{name} = B @ A is all zeros: this matrix was not trained (adapter still at its init?)")
    return s


def spectrum_metrics(s, energy=ENERGY):
    """Everything we report about one spectrum s (descending σ's). Sums in float64."""
    s = s.detach().to(torch.float64).cpu()
    if s.numel() == 0 or not torch.isfinite(s).all() or s[0] <= 0:
        raise ValueError("spectrum is empty, non-finite or zero: nothing to analyse")
    e = s ** 2
    cum = e.cumsum(0) / e.sum()
    p = s / s.sum()
    p = p[p > 0]                                   # 0·log 0 = 0
    return {
        "sigma": s.tolist(),
        "normalized": (s / s[0]).tolist(),         # σ_k / σ_1
        "cumulative_energy": cum.tolist(),         # Σ_{j<=k} σ_j² / Σ σ²
        "top_share": cum[0].item(),                # σ_1² / Σ σ²
        "effective_rank": math.exp(-(p * p.log()).sum().item()),
        "energy_rank": int((cum < energy - 1e-9).sum()) + 1,   # smallest k with cumulative energy >= energy
    }


def top_singular_vectors(M, k, start=None, oversample=10, tol=1e-4, max_iter=30):
    """Top-k left singular vectors (d_out, k) and values (k,) of M, descending.
    Subspace iteration on M Mᵀ with a Rayleigh-Ritz step (Halko, Martinsson & Tropp 2011, algs. 4.4
    and 5.1) costs a few (d, d) x (d, k) matmuls instead of a full SVD. `start` columns (W0's top
    singular vectors, an adapter's B) hold most of the answer for W0 + ΔW, so it converges in 0-3
    steps. Converged when every pair's residual ||M v - σ u|| <= tol·σ_1; otherwise a full SVD."""
    d_out, d_in = M.shape
    k = min(k, d_out, d_in)
    g = torch.Generator().manual_seed(0)   # a fixed local generator: the same answer every run
    X = torch.randn(d_out, k + oversample, generator=g, dtype=M.dtype)
    if start is not None:
        X = torch.cat([start.to(M.dtype), X[:, :max(0, k + oversample - start.shape[1])]], 1)
    if X.shape[1] <= min(d_out, d_in) // 2:
        X, last = torch.linalg.qr(X).Q, math.inf
        for i in range(max_iter):
            # Rayleigh-Ritz: SVD of Xᵀ M = Rᵀ Qᵀ through the (b, b) R; LAPACK is slow on wide matrices
            Q, R = torch.linalg.qr(M.T @ X)
            Ur, S, Vh = torch.linalg.svd(R.T)
            U, S, V = X @ Ur[:, :k], S[:k], Q @ Vh[:k].T
            res = (M @ V - U * S).norm(dim=0).max().item() / S[0].item()
            if res <= tol:
                return U, S
            if i >= 2 and res > 0.7 * last:   # tiny spectral gaps (a random-like W0): the SVD is quicker
                break
            X, last = torch.linalg.qr(M @ (M.T @ X)).Q, res
    U, S, _ = torch.linalg.svd(M, full_matrices=False)   # small matrix, or no convergence: exact
    return U[:, :k], S[:k]


def intruder_dimensions(U0, W, k=TOP_K, eps=EPS, start=None):
    """Shuttleworth et al.'s intruders: for each of the top-k left singular vectors u_i of
    W = W0 + ΔW, max_j |cos(u_i, u0_j)| over all columns of U0 (W0's left singular vectors, unit
    norm). Returns (max_cos (k,), {ε: number of u_i with max_cos < ε})."""
    U, _ = top_singular_vectors(W, k, start)
    max_cos = (U0.to(U.dtype).T @ U).abs().amax(0)        # (k,)
    return max_cos, {e: int((max_cos < e).sum()) for e in eps}


def analyze(base, runs, matrices=None, k=TOP_K, eps=EPS, float64=False):
    """The whole analysis, no files. base: {name: W0 (d_out, d_in)}. runs: list of dicts with
    'label', 'method', 'trainable_params', 'updates': {name: dense ΔW or (B, A) factors}.
    Returns a json-able dict: per run, per matrix metrics and the per-method aggregate."""
    dtype = torch.float64 if float64 else torch.float32
    names = matrices or sorted({n for r in runs for n in r["updates"]}, key=_natural)
    clock, now = {"W0 svd": 0.0, "spectra": 0.0, "intruders": 0.0}, time.perf_counter
    t0 = now()
    svd0 = {}   # W0's SVD, once per matrix, shared by every run
    for name in names:
        if name not in base:
            raise ValueError(f"no matrix {name!r} in the base model")
        if any(name in r["updates"] for r in runs):
            svd0[name] = torch.linalg.svd(base[name].to(dtype), full_matrices=False)[:2]   # (U0, S0)
    clock["W0 svd"] = now() - t0
    out = []
    for r in runs:
        per = {}
        for name in (n for n in names if n in r["updates"]):   # a matrix a run did not adapt has ΔW = 0
            W0, (U0, S0), u = base[name].to(dtype), svd0[name], r["updates"][name]
            what = f"ΔW of {name} in {r['label']}"
            t0 = now()
            if isinstance(u, (tuple, list)):   # factored: ΔW = B @ A
                B, A = (t.to(dtype) for t in u)
                if B.shape[0] != W0.shape[0] or A.shape[1] != W0.shape[1]:
                    raise ValueError(f"{what}: factors {tuple(B.shape)} @ {tuple(A.shape)} "
                                     f"do not match W0 {tuple(W0.shape)}")
                s = singular_values_factored(B, A, dtype, name=what)
                dW, start = B @ A, torch.cat([U0[:, :k + 10], B], 1)   # new top directions lie near span(U0_top, B)
            else:
                if u.shape != W0.shape:
                    raise ValueError(f"{what}: shape {tuple(u.shape)} differs from W0 {tuple(W0.shape)}")
                s = singular_values(u, dtype, name=what)
                dW, start = u.to(dtype), U0[:, :k + 10]
            m = spectrum_metrics(s)
            m["rel_norm"] = (s.double().norm() / S0.double().norm()).item()   # ||ΔW||_F / ||W0||_F
            t1 = now()
            max_cos, counts = intruder_dimensions(U0, W0 + dW, k, eps, start)
            m["intruder_max_cos"] = max_cos.tolist()
            m["intruders"] = {str(e): c for e, c in counts.items()}
            clock["spectra"] += t1 - t0
            clock["intruders"] += now() - t1
            per[name] = m
        if not per:
            raise ValueError(f"{r['label']}: none of the matrices {', '.join(names)} was adapted by this run")
        info = {key: v for key, v in r.items() if key != "updates"}
        out.append(info | {"matrices": per, "aggregate": aggregate(per, eps)})
    return {"settings": {"top_k": k, "eps": list(eps), "energy": ENERGY, "float64": float64,
                         "intruder_vectors": "left (U)", "matrices": names, "stage_seconds": clock}, "runs": out}


def aggregate(per, eps=EPS):
    """Per-method summary over matrices: means of the scalars, the mean σ_k/σ_1 curve (zero past
    a matrix's rank), intruders per matrix, and effective rank per layer and matrix kind."""
    ms = list(per.values())
    mean = lambda key: sum(m[key] for m in ms) / len(ms)
    er = torch.tensor([m["effective_rank"] for m in ms], dtype=torch.float64)
    n = max(len(m["normalized"]) for m in ms)
    curve = torch.zeros(n, dtype=torch.float64)
    for m in ms:
        curve[:len(m["normalized"])] += torch.tensor(m["normalized"], dtype=torch.float64) / len(ms)
    by_layer = {}
    for name, m in per.items():
        hit = re.search(r"\.h\.(\d+)\.(.+)$", name)
        kind, layer = (hit.group(2), int(hit.group(1))) if hit else (name, 0)
        by_layer.setdefault(kind, {})[str(layer)] = m["effective_rank"]
    return {
        "n_matrices": len(ms),
        "effective_rank_mean": er.mean().item(),
        "effective_rank_std": er.std(unbiased=False).item(),
        "energy_rank_mean": mean("energy_rank"),
        "top_share_mean": mean("top_share"),
        "rel_norm_mean": mean("rel_norm"),
        "intruders_per_matrix": {str(e): sum(m["intruders"][str(e)] for m in ms) / len(ms) for e in eps},
        "normalized_mean": curve.tolist(),
        "effective_rank_by_layer": by_layer,
    }


def _natural(name):
    """Sort transformer.h.10 after transformer.h.9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

# ----------------------------------------------------------------------------------------------
# reporting: everything below reads the dict analyze() returns, so the table, the JSON and the
# figure always show the same numbers


def format_table(result):
    """The per-method summary, then effective rank per layer."""
    eps, k = result["settings"]["eps"], result["settings"]["top_k"]
    head = (f"{'method':<22}{'trainable':>12}{'mats':>6}{'eff.rank':>10}{'±sd':>7}{'rank@90%':>10}"
            f"{'top σ² share':>14}{'|ΔW|/|W0|':>11}   intruders/matrix in top-{k} at ε="
            + " ".join(f"{e:g}" for e in eps))
    lines = [head, "-" * len(head)]
    for r in result["runs"]:
        a = r["aggregate"]
        lines.append(f"{r['label']:<22}{r['trainable_params']:>12,}{a['n_matrices']:>6}"
                     f"{a['effective_rank_mean']:>10.2f}{a['effective_rank_std']:>7.2f}{a['energy_rank_mean']:>10.2f}"
                     f"{a['top_share_mean']:>14.3f}{a['rel_norm_mean']:>11.4f}   "
                     + " ".join(f"{a['intruders_per_matrix'][str(e)]:.2f}" for e in eps))
    by_kind = [(f"{r['label']} {kind}", d) for r in result["runs"]
               for kind, d in r["aggregate"]["effective_rank_by_layer"].items()]
    layers = sorted({int(layer) for _, d in by_kind for layer in d})
    lines += ["", "effective rank exp(H(p)) per layer",
              f"{'method / matrix':<30}" + "".join(f"{'L' + str(layer):>7}" for layer in layers)]
    for name, d in by_kind:
        lines.append(f"{name:<30}" + "".join(f"{d[str(i)]:>7.2f}" if str(i) in d else f"{'-':>7}" for i in layers))
    return "\n".join(lines)


def legend_label(r):
    """Method, trainable parameters and the largest rank ΔW can have (a rank-1 curve is one point)."""
    return f"{r['label']} ({r['trainable_params']:,} trainable, rank ≤ {len(r['aggregate']['normalized_mean'])})"


def text_chart(result, width=32):
    """The figure without matplotlib: σ_k/σ_1 for k = 1..width as a bar row per method (log scale,
    ten characters from 1e-3 to 1, a step per factor 10^(1/3)), then effective rank per layer."""
    bars = " .:-=+*#%@"
    lines = [f"σ_k/σ_1 for k = 1..{width} (log scale: ' ' <= 1e-3 ... '@' = 1)"]
    for r in result["runs"]:
        c = r["aggregate"]["normalized_mean"][:width]
        row = "".join(bars[max(0, min(9, round(9 + 9 * math.log10(max(v, 1e-12)) / 3)))] for v in c)
        lines.append(f"  {legend_label(r):<56}|{row:<{width}}|")
    lines.append("mean effective rank per layer (over the matrices of each layer)")
    for r in result["runs"]:
        lines.append(f"  {legend_label(r):<56}" + " ".join(f"{v:.1f}" for v in _per_layer(r)[1]))
    return "\n".join(lines)


def _per_layer(r):
    by = {}
    for d in r["aggregate"]["effective_rank_by_layer"].values():
        for l, v in d.items():
            by.setdefault(int(l), []).append(v)
    layers = sorted(by)
    return layers, [sum(by[l]) / len(by[l]) for l in layers]


def save_figure(result, path):
    """Left: each method's mean normalised spectrum on one log-log axis. Right: mean effective
    rank per layer. Returns the path written, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(result["runs"]):   # a marker and dash per method: equal-rank curves overlap
        c = [v for v in r["aggregate"]["normalized_mean"] if v > 0]
        style = dict(marker="os^Dv*PX"[i % 8], ls=["-", "--", "-.", ":"][i % 4], ms=4, alpha=0.85)
        line, = ax1.plot(range(1, len(c) + 1), c, markevery=max(1, len(c) // 24), label=legend_label(r), **style)
        ax2.plot(*_per_layer(r), color=line.get_color(), **style)
    ax1.set(xscale="log", yscale="log", xlabel="singular value index $k$",
            ylabel=r"$\sigma_k / \sigma_1$ of $\Delta W$ (mean over matrices)", title="Spectrum of the weight update")
    ax2.set(yscale="log", xlabel="layer", ylabel=r"effective rank $\exp H(p)$, $p_k = \sigma_k / \Sigma \sigma$",
            title="Effective rank per layer (mean over its matrices)")
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=150)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_outputs(result, out):
    """out.json (every number), out.png (or out.txt, the text chart, without matplotlib)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    text = json.dumps(result, indent=1)
    one_line = lambda m: "[" + " ".join(m.group(1).split()) + "]"
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", one_line, text)   # a list of numbers per line, not a number
    with open(out + ".json.tmp", "w") as f:
        f.write(text)
    os.replace(out + ".json.tmp", out + ".json")
    fig = save_figure(result, out + ".png")
    if fig is None:
        with open(out + ".txt", "w") as f:
            f.write(text_chart(result) + "\n")
    return [out + ".json", fig or out + ".txt"]

# ----------------------------------------------------------------------------------------------
# loading train.py checkpoints: full fine-tuning gives ΔW = W_ft - W0, adapter runs give factors


def linear_names(model):
    """Names of every nn.Linear in the model ('transformer.h.0.attn.q', ...): the matrices one can ask for."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def resolve_matrices(spec, available):
    """'attn.q,attn.v' or full names -> the matching matrix names, in model order."""
    out = []
    for tok in [t.strip() for t in spec.split(",") if t.strip()]:
        hits = [n for n in available if n == tok or n.endswith("." + tok)]
        if not hits:
            raise ValueError(f"no matrix named {tok!r} in the base model: give names like "
                             f"{available[0] if available else 'transformer.h.0.attn.q'} or a suffix such as attn.q")
        out += hits
    return [n for n in available if n in out]


def _load_ckpt(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: give train.py's out_dir/ckpt.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a loadable checkpoint ({type(e).__name__}); "
                         "only plain tensors are accepted") from None
    if not isinstance(ckpt, dict) or not ("model" in ckpt or "adapter" in ckpt):
        raise ValueError(f"{path}: not a train.py checkpoint (neither 'model' nor 'adapter' in it)")
    return ckpt


def load_run(path, base_model, fingerprint):
    """One result checkpoint -> {'label', 'method', 'trainable_params', 'updates': {name: (B, A)}} for an
    adapter run; for full fine-tuning 'updates' holds the fine-tuned weights W_ft until run() picks
    the matrices and subtracts W0 (lm_head alone is 38M numbers: subtract only what is analysed)."""
    import adapters
    ckpt = _load_ckpt(path)
    theirs = (ckpt.get("base") or {}).get("fingerprint")
    if theirs != fingerprint:
        raise ValueError(f"{path} was fine-tuned from base {theirs} but --base has fingerprint {fingerprint}: "
                         f"pass the base it was trained from ({(ckpt.get('base') or {}).get('path', 'unknown')})")
    label = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if "adapter" in ckpt:   # rebuild the adapters on a copy of the base, then read their factors
        model = copy.deepcopy(base_model)
        adapters.add_adapters(model, **ckpt["adapter"]["config"])   # the config rebuilds the same adapters
        adapters.load_adapter_state_dict(model, ckpt["adapter"]["state"])
        with torch.no_grad():
            updates = {n: m.factors() for n, m in adapters.adapted_modules(model).items()}
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        method = ckpt["adapter"]["config"]["method"]
    else:                   # full fine-tuning: every weight moved
        sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
        updates = {}
        for n in linear_names(base_model):
            w, w0 = sd.get(n + ".weight"), base_model.get_submodule(n).weight
            if w is None or w.shape != w0.shape:
                raise ValueError(f"{path}: no {tuple(w0.shape)} weight for {n}: a different architecture than --base")
            updates[n] = w
        trainable, method = sum(p.numel() for p in base_model.parameters()), "full"
    return {"label": label, "path": path, "method": method, "trainable_params": trainable, "updates": updates}


def run(base_path, paths, matrices=None, out="analysis", float64=False, k=TOP_K, eps=EPS):
    """What the command line does; returns (result, table, files written)."""
    from model import load_model
    base_model, _ = load_model(base_path)
    fingerprint = base_model.fingerprint()
    runs = [load_run(p, base_model, fingerprint) for p in paths]
    for r in runs:   # label by method, with the run's folder name when two runs share a method
        shared = [x["method"] for x in runs].count(r["method"]) > 1
        r["label"] = f"{r['method']}:{r['label']}" if shared else r["method"]
    available = linear_names(base_model)
    if matrices:
        names = resolve_matrices(matrices, available)
    else:   # every matrix any adapter run adapted; full fine-tuning is compared on the same ones
        names = [n for n in available if any(n in r["updates"] for r in runs if r["method"] != "full")]
        names = names or resolve_matrices("attn.q,attn.v", available)
    base = {n: base_model.get_submodule(n).weight.detach() for n in names}
    for r in runs:
        if r["method"] == "full":   # ΔW = W_ft - W0
            r["updates"] = {n: r["updates"][n].float() - base[n].float() for n in names}
    t0 = time.perf_counter()
    result = analyze(base, runs, names, k=k, eps=eps, float64=float64)
    result["settings"]["seconds"] = time.perf_counter() - t0
    result["base"] = {"path": base_path, "fingerprint": fingerprint}
    return result, format_table(result), write_outputs(result, out)


# ----------------------------------------------------------------------------------------------
# benchmark: the speed target on synthetic factors


def bench(n_layer=12, d=768, rel=0.05, seed=0, float64=False):
    """All q and v matrices of a GPT-2-small-shaped model, four factored methods (ranks 8-24) and
    full fine-tuning (dense), each ΔW scaled to ||ΔW||_F = rel·||W0||_F. W0 gets a power-law
    spectrum σ_j ∝ j^-0.6, like trained weights'. Returns the seconds analyze() took."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    orth = lambda: torch.linalg.qr(rnd(d, d)).Q
    base = {}
    for i in range(n_layer):
        for kind in ("attn.q", "attn.v"):
            base[f"transformer.h.{i}.{kind}"] = (orth() * torch.arange(1, d + 1).float() ** -0.6) @ orth().T
    fit = lambda W0, B, A: (B * (rel * W0.norm() / (B @ A).norm()), A)
    ranks = {"lora": 8, "multilora": 24, "nola": 8, "cat": 16}   # multilora: 3 modules of rank 8; cat: 2 LoRAs
    params = {"lora": 8 * 2 * d, "multilora": 24 * 2 * d + 3, "nola": 64 + 64, "cat": 2}   # per matrix
    runs = [{"label": m, "method": m, "trainable_params": len(base) * params[m],
             "updates": {n: fit(W0, rnd(d, r), rnd(r, d)) for n, W0 in base.items()}} for m, r in ranks.items()]
    dense = {n: rnd(d, d) + rnd(d, 4) @ rnd(4, d) for n in base}   # noise plus a few strong directions
    runs.append({"label": "full", "method": "full", "trainable_params": 124_439_808,   # GPT-2 small
                 "updates": {n: dW * (rel * base[n].norm() / dW.norm()) for n, dW in dense.items()}})
    t0, c0 = time.perf_counter(), time.process_time()
    result = analyze(base, runs, float64=float64)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(format_table(result))
    print(f"\nbench: {len(base)} matrices ({n_layer} layers x q,v, {d}x{d}) x {len(runs)} methods, |ΔW|/|W0| = {rel}, "
          f"intruders included: {dt:.2f} s wall, {cpu:.2f} s CPU, {torch.get_num_threads()} threads "
          f"({'float64' if float64 else 'float32'}); "
          "stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in result["settings"]["stage_seconds"].items()))
    return dt


def main(argv=None):
    p = argparse.ArgumentParser(description="Singular-value spectra and intruder dimensions of weight updates.")
    p.add_argument("results", nargs="*", help="train.py checkpoints (full fine-tuning or adapter runs) over --base")
    p.add_argument("--base", help="the base checkpoint or GPT-2 directory the results were fine-tuned from")
    p.add_argument("--matrices", default="", help="comma-separated names or suffixes (attn.q,attn.v); "
                   "default: every matrix an adapter adapted")
    p.add_argument("--out", default="analysis",
                   help="output prefix: writes OUT.json and OUT.png (OUT.txt without matplotlib)")
    p.add_argument("--float64", action="store_true", help="do the decompositions in float64")
    p.add_argument("--top_k", type=int, default=TOP_K, help="top singular vectors of W0+ΔW checked for intruders")
    p.add_argument("--eps", default=",".join(map(str, EPS)), help="intruder thresholds ε on max |cosine|")
    p.add_argument("--bench", action="store_true", help="time the analysis on synthetic GPT-2-small-shaped updates")
    p.add_argument("--bench_rel", type=float, default=0.05, help="--bench: size of each ΔW relative to W0 (Frobenius)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default); "
                   "use 1 when other jobs share the CPU: oversubscribed threads are many times slower")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.bench:
        return bench(rel=a.bench_rel, float64=a.float64)
    if not a.base or not a.results:
        p.error("give --base=<base checkpoint or GPT-2 dir> and at least one result checkpoint")
    try:
        eps = tuple(float(e) for e in a.eps.split(","))
    except ValueError:
        raise ValueError(f"--eps takes comma-separated numbers like 0.3,0.5,0.7, got {a.eps!r}") from None
    result, table, files = run(a.base, a.results, a.matrices, a.out, a.float64, a.top_k, eps)
    print(table)
    if files[1].endswith(".txt"):
        print("\n" + text_chart(result))
    print(f"\nwrote {', '.join(files)} ({result['settings']['seconds']:.1f} s)")
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"analyze.py: {e}")
