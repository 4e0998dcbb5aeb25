"""
What did fine-tuning change? Singular-value spectra of the weight updates ΔW, and intruder
dimensions, for full fine-tuning and every adapter method (README: "Looking at the updates").

    python analyze.py --base=out/base out/lora_mixture out/finetune_mixture --out=out/spectra

--base is a train.py out_dir or ckpt.pt, or a GPT-2 directory or name; each result is a train.py out_dir
or ckpt.pt recording that base's fingerprint (no ΔW is measured against the wrong W0). Prints a table;
writes OUT.json (every number), OUT.png (OUT.txt, a text chart, without matplotlib). Two lenses:
1. MultiLoRA (Wang et al. 2023, Fig. 1): LoRA's ΔW is dominated by a few top singular vectors, full
   fine-tuning's spreads over many, MultiLoRA's is flatter. Numbers: σ_k/σ_1, cumulative energy
   Σ_{j<=k} σ_j² / Σ σ², the top share σ_1² / Σ σ², entropy effective rank exp(H(p)) with
   p_k = σ_k / Σ σ (Roy & Vetterli 2007), and the smallest rank holding 90% of the energy.
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
import statistics
import sys
import time

import torch

import adapters
from formats.checkpoint import load_model, read_checkpoint
from formats.huggingface import HF_MODELS

EPS = (0.3, 0.5, 0.7)  # intruder thresholds
TOP_K = 10  # how many top singular vectors of W0 + ΔW are checked for intruders
ENERGY = 0.9  # "rank holding 90% of the energy"
OUT = "out/analysis/spectra"  # default output prefix: under out/, which git ignores

# ----------------------------------------------------------------------------------------------
# numerics: small pure functions on tensors


def singular_values(u, dtype=torch.float32, name="ΔW"):
    """σ of ΔW, descending; one-line errors for updates there is nothing to say about. u is a dense
    ΔW (an O(d³) SVD) or factors (B, A) with ΔW = B @ A, never formed: with B = Q_B R_B and
    Aᵀ = Q_A R_A, ΔW = Q_B (R_B R_Aᵀ) Q_Aᵀ and the Q's have orthonormal columns, so ΔW has the
    singular values of the small core R_B R_Aᵀ: O((d_in + d_out) r²) instead of O(d_out d_in min(d))."""
    factored = isinstance(u, (tuple, list))
    for t in u if factored else [u]:
        if t.numel() == 0:
            raise ValueError(
                f"{name} is empty (shape {tuple(t.shape)}): nothing to analyse; check the checkpoint"
            )
        if not torch.isfinite(t).all():
            raise ValueError(
                f"{name} has NaN/inf entries: the run diverged or the checkpoint is corrupt"
            )
    if factored:  # the small core R_B R_Aᵀ has ΔW's singular values
        B, A = (t.to(dtype) for t in u)
        u = torch.linalg.qr(B).R @ torch.linalg.qr(A.T).R.T
    s = torch.linalg.svdvals(u.to(dtype))
    if not s.any():
        raise ValueError(
            f"{name} is all zeros: this matrix was not trained (adapter still at its init?)"
        )
    return s


def spectrum_metrics(s, energy=ENERGY):
    """Everything we report about one spectrum s (descending σ's). Sums in float64."""
    # singular_values() refused empty, non-finite and zero spectra
    s = s.detach().to(torch.float64).cpu()
    cum = (s**2).cumsum(0) / (s**2).sum()
    p = s[s > 0] / s.sum()  # 0·log 0 = 0
    return {
        "sigma": s.tolist(),
        "normalized": (s / s[0]).tolist(),  # σ_k / σ_1
        "cumulative_energy": cum.tolist(),  # Σ_{j<=k} σ_j² / Σ σ²
        "top_share": cum[0].item(),  # σ_1² / Σ σ²
        "effective_rank": math.exp(-(p * p.log()).sum().item()),
        "energy_rank": int((cum < energy - 1e-9).sum())
        + 1,  # smallest k with cumulative energy >= energy
    }


def top_singular_vectors(M, k, niter=8, tol=1e-3):
    """Top-k left singular vectors (d_out, k) and values (k,) of M, descending. torch.svd_lowrank
    (randomized subspace iteration, Halko, Martinsson & Tropp 2011) on k + 10 columns costs a few
    (d, d) x (d, k + 10) matmuls instead of a full SVD; its random start has a fixed seed, so every
    run gives the same answer. A small matrix, or a residual max ||M v - σ u|| > tol·σ_1 (no
    convergence: tiny spectral gaps, as in a random matrix), gets an exact SVD instead."""
    k = min(k, *M.shape)
    if 2 * (k + 10) <= min(M.shape):
        with torch.random.fork_rng(devices=[]):  # the fixed start leaves the caller's RNG alone
            torch.manual_seed(0)
            U, S, V = torch.svd_lowrank(M, q=k + 10, niter=niter)
        if ((M @ V[:, :k] - U[:, :k] * S[:k]).norm(dim=0) <= tol * S[0]).all():
            return U[:, :k], S[:k]
    U, S, _ = torch.linalg.svd(M, full_matrices=False)
    return U[:, :k], S[:k]


def intruder_dimensions(U0, W, k=TOP_K, eps=EPS):
    """Shuttleworth et al.'s intruders: for each of the top-k left singular vectors u_i of
    W = W0 + ΔW, max_j |cos(u_i, u0_j)| over all columns of U0 (W0's left singular vectors, unit
    norm). Returns (max_cos (k,), {ε: number of u_i with max_cos < ε})."""
    U, _ = top_singular_vectors(W, k)
    max_cos = (U0.to(U.dtype).T @ U).abs().amax(0)
    return max_cos, {e: int((max_cos < e).sum()) for e in eps}


def analyze(base, runs, matrices=None, k=TOP_K, eps=EPS, float64=False):
    """The whole analysis, no files. base: {name: W0 (d_out, d_in)}. runs: list of dicts with
    'label', 'method', 'trainable_params', 'updates': {name: dense ΔW or (B, A) factors}.
    Returns a json-able dict: per run, per matrix metrics and the per-method aggregate."""
    t0, cpu0, dtype = (
        time.perf_counter(),
        time.process_time(),
        torch.float64 if float64 else torch.float32,
    )
    # h.10 after h.9
    natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
    names = matrices or sorted({n for r in runs for n in r["updates"]}, key=natural)
    U0, out = {}, []
    for r in runs:
        per = {}
        # a matrix a run did not adapt has ΔW = 0
        for name in (n for n in names if n in r["updates"]):
            if name not in base:
                raise ValueError(f"no matrix {name!r} in the base model")
            W0, u, what = base[name].to(dtype), r["updates"][name], f"ΔW of {name} in {r['label']}"
            if name not in U0:  # W0's left singular vectors, once per matrix, shared by every run
                U0[name] = torch.linalg.svd(W0, full_matrices=False)[0]
            s = singular_values(u, dtype, name=what)
            dW = u[0].to(dtype) @ u[1].to(dtype) if isinstance(u, (tuple, list)) else u.to(dtype)
            if dW.shape != W0.shape:
                raise ValueError(f"{what} has shape {tuple(dW.shape)} but W0 has {tuple(W0.shape)}")
            max_cos, counts = intruder_dimensions(U0[name], W0 + dW, k, eps)
            per[name] = spectrum_metrics(s) | {
                "rel_norm": (s.double().norm() / W0.double().norm()).item(),  # ||ΔW||_F / ||W0||_F
                "intruder_max_cos": max_cos.tolist(),
                "intruders": {str(e): c for e, c in counts.items()},
            }
        if not per:
            raise ValueError(
                f"{r['label']}: none of the matrices {', '.join(names)} was adapted by this run"
            )
        info = {key: v for key, v in r.items() if key != "updates"}
        out.append(info | {"matrices": per, "aggregate": aggregate(per, eps)})
    return {
        "settings": {
            "top_k": k,
            "eps": list(eps),
            "energy": ENERGY,
            "float64": float64,
            "intruder_vectors": "left (U)",
            "matrices": names,
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0,
        },
        "runs": out,
    }


def aggregate(per, eps=EPS):
    """Per-method summary over matrices: means of the scalars, the mean σ_k/σ_1 curve (zero past
    a matrix's rank), intruders per matrix, effective rank per layer and matrix kind, and per layer."""
    ms = list(per.values())
    mean = lambda key: sum(m[key] for m in ms) / len(ms)
    curve = [
        sum(m["normalized"][i] for m in ms if i < len(m["normalized"])) / len(ms)
        for i in range(max(len(m["normalized"]) for m in ms))
    ]
    by_layer, layers = {}, {}
    for name, m in per.items():
        hit = re.search(r"\.h\.(\d+)\.(.+)$", name)
        kind, layer = (hit.group(2), int(hit.group(1))) if hit else (name, 0)
        by_layer.setdefault(kind, {})[str(layer)] = m["effective_rank"]
        layers.setdefault(layer, []).append(m["effective_rank"])
    return {
        "n_matrices": len(ms),
        "effective_rank_mean": mean("effective_rank"),
        "effective_rank_std": statistics.pstdev(m["effective_rank"] for m in ms),
        "energy_rank_mean": mean("energy_rank"),
        "top_share_mean": mean("top_share"),
        "rel_norm_mean": mean("rel_norm"),
        "intruders_per_matrix": {
            str(e): sum(m["intruders"][str(e)] for m in ms) / len(ms) for e in eps
        },
        "normalized_mean": curve,
        "effective_rank_by_layer": by_layer,
        "effective_rank_layer_mean": {str(i): sum(v) / len(v) for i, v in sorted(layers.items())},
    }


# ----------------------------------------------------------------------------------------------
# reporting: everything below reads the dict analyze() returns, so the table, the JSON and the
# figure always show the same numbers


def format_table(result):
    """The per-method summary, then effective rank per layer."""
    eps, k = result["settings"]["eps"], result["settings"]["top_k"]
    head = (
        f"{'method':<22}{'trainable':>12}{'mats':>6}{'eff.rank':>10}{'±sd':>7}{'rank@90%':>10}"
        f"{'top σ² share':>14}{'|ΔW|/|W0|':>11}   intruders/matrix in top-{k} at ε="
        + " ".join(f"{e:g}" for e in eps)
    )
    lines = [head, "-" * len(head)]
    for r in result["runs"]:
        a = r["aggregate"]
        lines.append(
            f"{r['label']:<22}{r['trainable_params']:>12,}{a['n_matrices']:>6}"
            f"{a['effective_rank_mean']:>10.2f}{a['effective_rank_std']:>7.2f}{a['energy_rank_mean']:>10.2f}"
            f"{a['top_share_mean']:>14.3f}{a['rel_norm_mean']:>11.4f}   "
            + " ".join(f"{a['intruders_per_matrix'][str(e)]:.2f}" for e in eps)
        )
    by_kind = [
        (f"{r['label']} {kind}", d)
        for r in result["runs"]
        for kind, d in r["aggregate"]["effective_rank_by_layer"].items()
    ]
    layers = sorted({int(layer) for _, d in by_kind for layer in d})
    lines += [
        "",
        "effective rank exp(H(p)) per layer",
        f"{'method / matrix':<30}" + "".join(f"{'L' + str(layer):>7}" for layer in layers),
    ]
    for name, d in by_kind:
        lines.append(
            f"{name:<30}"
            + "".join(f"{d[str(i)]:>7.2f}" if str(i) in d else f"{'-':>7}" for i in layers)
        )
    return "\n".join(lines)


def legend_label(r):
    """Method, trainable parameters and the largest rank ΔW can have (a rank-1 curve is one point)."""
    return f"{r['label']} ({r['trainable_params']:,} trainable, rank ≤ {len(r['aggregate']['normalized_mean'])})"


def text_chart(result, width=32):
    """The figure's left panel without matplotlib: σ_k/σ_1, k = 1..width, a bar row per method (log scale,
    ten characters from 1e-3 to 1, a step per factor 10^(1/3)); the right panel is in the table."""
    bars = " .:-=+*#%@"
    lines = [f"σ_k/σ_1 for k = 1..{width} (log scale: ' ' <= 1e-3 ... '@' = 1)"]
    for r in result["runs"]:
        c = r["aggregate"]["normalized_mean"][:width]
        row = "".join(bars[max(0, min(9, round(9 + 9 * math.log10(max(v, 1e-12)) / 3)))] for v in c)
        lines.append(f"  {legend_label(r):<56}|{row:<{width}}|")
    return "\n".join(lines)


def save_figure(result, path):
    """Left: each method's mean normalised spectrum on one log-log axis. Right: mean effective
    rank per layer. Returns the path written, or None without matplotlib."""
    try:  # the Figure API, not pyplot: no backend or global figure state is changed
        from matplotlib import figure, ticker
    except ImportError:
        return None
    fig = figure.Figure(figsize=(11, 4.2), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    # a marker and dash per method: equal-rank curves overlap
    for i, r in enumerate(result["runs"]):
        c = [v for v in r["aggregate"]["normalized_mean"] if v > 0]
        style = dict(marker="os^Dv*PX"[i % 8], ls=["-", "--", "-.", ":"][i % 4], ms=4, alpha=0.85)
        (line,) = ax1.plot(
            range(1, len(c) + 1), c, markevery=max(1, len(c) // 24), label=legend_label(r), **style
        )
        by_layer = r["aggregate"]["effective_rank_layer_mean"]
        ax2.plot(
            [int(i) for i in by_layer], list(by_layer.values()), color=line.get_color(), **style
        )
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="singular value index $k$",
        ylabel=r"$\sigma_k / \sigma_1$ of $\Delta W$ (mean over matrices)",
        title="Spectrum of the weight update",
    )
    ax2.set(
        yscale="log",
        xlabel="layer",
        ylabel=r"effective rank $\exp H(p)$, $p_k = \sigma_k / \Sigma \sigma$",
        title="Effective rank per layer (mean over its matrices)",
    )
    ax2.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax1.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    tmp = f"{path}.{os.getpid()}.tmp.png"  # this writer's own name; savefig reads the extension
    fig.savefig(tmp, dpi=150)
    os.replace(tmp, path)
    return path


def write_outputs(result, out):
    """out.json (every number), out.png (or out.txt, the text chart, without matplotlib)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # a list of numbers per line, not a number
    one_line = lambda m: "[" + " ".join(m.group(1).split()) + "]"
    tmp = f"{out}.json.{os.getpid()}.tmp"  # this writer's own name: two writers never share one
    with open(tmp, "w") as f:
        f.write(re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", one_line, json.dumps(result, indent=1)))
    os.replace(tmp, out + ".json")
    if save_figure(result, out + ".png"):
        return [out + ".json", out + ".png"]
    with open(out + ".txt", "w") as f:
        f.write(text_chart(result) + "\n")
    return [out + ".json", out + ".txt"]


# ----------------------------------------------------------------------------------------------
# loading train.py results: full fine-tuning gives ΔW = W_ft - W0, adapter runs give factors


def checkpoint_file(path, what="result"):
    """A train.py out_dir stands for the ckpt.pt in it. For --base, a directory with config.json holds
    Hugging Face GPT-2 weights and a name such as gpt2 is fetched by model.py."""
    if (
        os.path.isfile(path)
        or what == "--base"
        and (path in HF_MODELS or os.path.isfile(os.path.join(path, "config.json")))
    ):
        return path
    if os.path.isfile(os.path.join(path, "ckpt.pt")):
        return os.path.join(path, "ckpt.pt")
    hf = what == "--base"
    problem = (
        f"is a directory without ckpt.pt{' or config.json' * hf}"
        if os.path.isdir(path)
        else "does not exist"
    )
    raise FileNotFoundError(
        f"{what} {path} {problem}: give a train.py out_dir (holding ckpt.pt) or its ckpt.pt"
        + ", or a Hugging Face GPT-2 directory (holding config.json) or name" * hf
    )


def load_run(path, base_model, fingerprint):
    """One result -> {'label', 'path', 'method', 'trainable_params', 'updates'}: {name: (B, A)} for an
    adapter run; for full fine-tuning the fine-tuned weights W_ft until run() picks the matrices and
    subtracts W0 (lm_head alone is 38M numbers: subtract only what is analysed)."""
    path = checkpoint_file(path)
    ckpt = read_checkpoint(path)
    base = ckpt.get("base") or {}
    if "adapter" not in ckpt and "model" not in ckpt:
        raise ValueError(f"{path}: not a train.py checkpoint (neither 'model' nor 'adapter' in it)")
    if not base:
        raise ValueError(
            f"{path} records no base it was fine-tuned from (a pretraining checkpoint?): "
            "give fine-tuning or adapter runs trained from --base"
        )
    if base.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{path} was fine-tuned from base {base.get('path')} (fingerprint {base.get('fingerprint')}), "
            f"not from --base (fingerprint {fingerprint}): pass --base={base.get('path')}"
        )
    if "adapter" in ckpt:  # rebuild the adapters on a copy of the base, then read their factors
        model = copy.deepcopy(base_model)
        method = adapters.load_adapter_checkpoint(path, model)["config"]["method"]
        updates = {
            n: tuple(t.detach() for t in m.factors())
            for n, m in adapters.adapted_modules(model).items()
        }
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    else:  # full fine-tuning: every weight moved
        updates, method, trainable = {}, "full", sum(p.numel() for p in base_model.parameters())
        for n in adapters.linear_names(base_model, "*"):
            w, w0 = ckpt["model"].get(n + ".weight"), base_model.get_submodule(n).weight
            if w is None or w.shape != w0.shape:
                raise ValueError(
                    f"{path}: no {tuple(w0.shape)} weight for {n}: a different architecture than --base"
                )
            updates[n] = w
    label = os.path.basename(os.path.dirname(os.path.abspath(path)))  # the run's folder name
    return {
        "label": label,
        "path": path,
        "method": method,
        "trainable_params": trainable,
        "updates": updates,
    }


def output_files(out):
    """The files write_outputs may write for the prefix `out`."""
    return [out + ".json", out + ".png", out + ".txt"]


def check_settings(base_path, paths, out, k, eps, overwrite):
    """Checks before any work: top_k and eps in range, and outputs that replace nothing unasked and
    never one of this analysis's own inputs (whatever --overwrite says)."""
    if type(k) is not int or k <= 0:
        raise ValueError(f"--top_k must be a positive number of singular vectors, got {k}")
    for e in eps:
        if not 0 < e <= 1:  # also refuses nan, for which every comparison is false
            raise ValueError(f"--eps takes thresholds in (0, 1] on |cosine|, got {e}")
    for f in output_files(out):
        for given in [base_path, *paths]:
            if os.path.isfile(given) and os.path.realpath(given) == os.path.realpath(f):
                raise ValueError(
                    f"--out={out} would write {f}, which is this analysis's input {given}: "
                    "give another --out (--overwrite never replaces an input)"
                )
        if os.path.exists(f) and not overwrite:
            raise ValueError(
                f"{f} already exists: give another --out, or --overwrite to replace it"
            )


def run(base_path, paths, matrices=None, out=OUT, float64=False, k=TOP_K, eps=EPS, overwrite=True):
    """What the command line does; returns (result, table, files written). overwrite=False refuses
    to replace an existing output file (the command line's default)."""
    check_settings(base_path, paths, out, k, eps, overwrite)
    base_file = checkpoint_file(base_path, "--base")
    try:
        base_model, ckpt = load_model(base_file)
    except ValueError as e:
        raise ValueError(f"--base: {e}") from None
    fingerprint, runs = base_model.fingerprint(), []
    loaded = (
        f"base: {base_file} ({'a train.py checkpoint' if ckpt else 'Hugging Face GPT-2 weights'}, "
        f"{sum(p.numel() for p in base_model.parameters()):,} parameters, fingerprint {fingerprint})"
    )
    for p in paths:
        try:
            runs.append(load_run(p, base_model, fingerprint))
        except ValueError as e:  # every message names the file
            raise ValueError(str(e) if p in str(e) else f"{p}: {e}") from None
    for r in runs:  # label by method, with the run's folder name when two runs share a method
        shared = [x["method"] for x in runs].count(r["method"]) > 1
        r["label"] = f"{r['method']}:{r['label']}" if shared else r["method"]
    try:  # names, suffixes or globs, picked as adapters pick their targets
        names = adapters.linear_names(base_model, matrices or "*")
    except ValueError as e:
        raise ValueError(f"--matrices={matrices}: {e}") from None
    # every matrix an adapter run adapted; full fine-tuning is compared on the same ones
    if not matrices:
        names = [
            n for n in names if any(n in r["updates"] for r in runs if r["method"] != "full")
        ] or adapters.linear_names(base_model, "attn.q,attn.v")
    base = {n: base_model.get_submodule(n).weight.detach() for n in names}
    for r in runs:
        if r["method"] == "full":  # ΔW = W_ft - W0
            r["updates"] = {n: r["updates"][n].float() - base[n].float() for n in names}
    result = analyze(base, runs, names, k=k, eps=eps, float64=float64)
    result["base"] = {"path": base_file, "fingerprint": fingerprint, "loaded": loaded}
    return result, format_table(result), write_outputs(result, out)


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Singular-value spectra and intruder dimensions of weight updates."
    )
    p.add_argument(
        "results",
        nargs="+",
        help="train.py out_dirs or their ckpt.pt (full fine-tuning or adapter runs)",
    )
    p.add_argument(
        "--base",
        required=True,
        help="the results' base: a train.py out_dir or ckpt.pt, a GPT-2 directory or name",
    )
    p.add_argument(
        "--matrices",
        default="",
        help="names, suffixes (attn.q,attn.v) or globs; default: what adapters adapted",
    )
    p.add_argument(
        "--out",
        default=OUT,
        help="output prefix: writes OUT.json and OUT.png (OUT.txt without matplotlib)",
    )
    p.add_argument("--float64", action="store_true", help="do the decompositions in float64")
    p.add_argument(
        "--top_k",
        type=int,
        default=TOP_K,
        help="top singular vectors of W0+ΔW checked for intruders",
    )
    p.add_argument(
        "--eps", default=",".join(map(str, EPS)), help="intruder thresholds ε on max |cosine|"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT.json / OUT.png / OUT.txt if they exist (else the analysis refuses)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default; 1 on a shared CPU)",
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        eps = tuple(float(e) for e in a.eps.split(","))
    except ValueError:
        raise ValueError(
            f"--eps takes comma-separated numbers like 0.3,0.5,0.7, got {a.eps!r}"
        ) from None
    result, table, files = run(
        a.base, a.results, a.matrices, a.out, a.float64, a.top_k, eps, a.overwrite
    )
    print(result["base"]["loaded"] + "\n\n" + table)
    if files[1].endswith(".txt"):
        print("\n" + text_chart(result))
    print(f"\nwrote {', '.join(files)} ({result['settings']['seconds']:.1f} s)")
    return result


if __name__ == "__main__":
    try:
        main()
    except (
        ValueError,
        OSError,
        RuntimeError,
    ) as e:  # bad input: one line naming the file, no traceback
        sys.exit(f"analyze.py: {e}")
