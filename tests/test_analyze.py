"""analyze.py: spectra recovered exactly, QR path == dense SVD, effective rank, planted intruders,
table == JSON, the real checkpoint formats (tiny models built in-process), out_dirs as inputs, the
default output folder, one-line errors, and the bench's numbers against an independent SVD."""

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import adapters as ad
import analyze as an
import bench
from model import GPT, GPTConfig

torch.set_num_threads(1)
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)


def orth(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q


def planted(s, d_out, d_in, seed=0):
    """A (d_out, d_in) matrix with singular values s and random singular vectors: (U, V, W)."""
    U, V = orth(d_out, seed)[:, : len(s)], orth(d_in, seed + 1)[:, : len(s)]
    s = torch.as_tensor(s, dtype=torch.float64)
    return U, V, (U * s) @ V.T


# --- numerics ------------------------------------------------------------------------------


def test_planted_singular_values_are_recovered():
    s = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 1e-3], dtype=torch.float64)
    U, V, dW = planted(s, 40, 30)
    torch.testing.assert_close(an.singular_values(dW, torch.float64)[:7], s, rtol=0, atol=1e-6)
    assert an.singular_values(dW, torch.float64)[7:].abs().max() < 1e-6
    torch.testing.assert_close(
        an.singular_values((U * s, V.T), torch.float64), s, rtol=0, atol=1e-6
    )
    # float32 too
    torch.testing.assert_close(an.singular_values(dW.float()).double()[:7], s, rtol=0, atol=1e-5)


@pytest.mark.parametrize("d_out,r,d_in", [(50, 6, 40), (10, 16, 12)])  # r > d: the core is (d, d)
def test_qr_path_equals_dense_svd(d_out, r, d_in):
    g = torch.Generator().manual_seed(3)
    B, A = torch.randn(d_out, r, generator=g), torch.randn(r, d_in, generator=g)
    dense = torch.linalg.svdvals(B.double() @ A.double())
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        s = an.singular_values((B, A), dtype).double()
        assert s.dtype == torch.float64 and len(s) == min(d_out, r, d_in)
        torch.testing.assert_close(s, dense[: len(s)], rtol=tol, atol=tol * dense[0].item())
    assert dense[min(d_out, r, d_in) :].sum() < 1e-10 * dense[0]


def test_effective_rank_flat_onehot_and_known_entropy():
    for n in (1, 4, 10, 37):
        m = an.spectrum_metrics(torch.full((n,), 2.5))
        assert abs(m["effective_rank"] - n) < 1e-9 and m["energy_rank"] == math.ceil(0.9 * n)
        assert abs(m["top_share"] - 1 / n) < 1e-12 and m["normalized"] == [1.0] * n
    m = an.spectrum_metrics(torch.tensor([3.0, 0, 0, 0]))
    assert m["effective_rank"] == 1.0 and m["energy_rank"] == 1 and m["top_share"] == 1.0
    m = an.spectrum_metrics(torch.tensor([2.0, 1.0, 1.0]))  # p = (1/2, 1/4, 1/4): H = 1.5 ln 2
    assert abs(m["effective_rank"] - 2**1.5) < 1e-12
    torch.testing.assert_close(
        torch.tensor(m["cumulative_energy"]), torch.tensor([4 / 6, 5 / 6, 1.0])
    )
    assert m["energy_rank"] == 3


def w0_with_tail(d=64, seed=0):
    """W0 with well separated top singular values and a small tail (σ_j = 10·0.9^j)."""
    s = 10 * 0.9 ** torch.arange(d, dtype=torch.float64)
    U, V, W0 = planted(s, d, d, seed)
    return U, V, s, W0


def test_intruder_planted_by_rotating_a_top_direction_out_of_the_span():
    U, V, s, W0 = w0_with_tail()
    # unit vector spread over W0's tail: |cos| <= 1/√24 with each u0_j
    w = U[:, 40:].sum(1) / math.sqrt(24)
    dW = s[0] * torch.outer(w - U[:, 0], V[:, 0])  # u0_1 rotated to w, same σ and right vector
    U0 = torch.linalg.svd(W0)[0]
    max_cos, counts = an.intruder_dimensions(U0, W0 + dW, k=10, eps=(0.3, 0.5, 0.7))
    assert counts == {0.3: 1, 0.5: 1, 0.7: 1}
    assert abs(max_cos[0].item() - 1 / math.sqrt(24)) < 0.02  # the new top vector is the intruder
    assert max_cos[1:].min() > 0.99  # the others are W0's own
    # the same update delivered as factors goes through the same path
    run = {
        "label": "x",
        "method": "lora",
        "trainable_params": 1,
        "updates": {"m": ((w - U[:, 0])[:, None] * s[0], V[:, 0][None])},
    }
    res = an.analyze({"m": W0}, [run], float64=True)["runs"][0]["matrices"]["m"]
    assert res["intruders"] == {"0.3": 1, "0.5": 1, "0.7": 1} and res[
        "effective_rank"
    ] == pytest.approx(1.0)


def test_update_inside_w0_top_subspace_makes_no_intruders():
    U, V, s, W0 = w0_with_tail()
    # grows every top σ, keeps them distinct
    delta = s[:10] * torch.linspace(0.8, 0.1, 10, dtype=torch.float64)
    B, A = U[:, :10] * delta, V[:, :10].T
    U0 = torch.linalg.svd(W0)[0]
    max_cos, counts = an.intruder_dimensions(U0, W0 + B @ A, k=10)
    assert counts == {0.3: 0, 0.5: 0, 0.7: 0} and max_cos.min() > 0.999
    res = an.analyze(
        {"m": W0.float()},
        [
            {
                "label": "x",
                "method": "lora",
                "trainable_params": 1,
                "updates": {"m": (B.float(), A.float())},
            }
        ],
    )
    assert res["runs"][0]["matrices"]["m"]["intruders"] == {"0.3": 0, "0.5": 0, "0.7": 0}


# gaussian: tiny gaps, falls back to a full SVD
@pytest.mark.parametrize("kind", ["fine-tuned", "gaussian"])
def test_top_singular_vectors_match_full_svd(kind, monkeypatch):
    g = torch.Generator().manual_seed(5)
    if kind == "fine-tuned":
        M = w0_with_tail(96)[3] + torch.randn(96, 96, generator=g, dtype=torch.float64) * 0.05
    else:
        M = torch.randn(96, 96, generator=g, dtype=torch.float64)
    Ue, Se, _ = torch.linalg.svd(M)
    full_svds, svd = [], torch.linalg.svd
    monkeypatch.setattr(
        torch.linalg, "svd", lambda A, **k: full_svds.append(A.shape == M.shape) or svd(A, **k)
    )
    torch.manual_seed(123)
    Ut, St = an.top_singular_vectors(M, 10)
    # the randomized solver converged, or an exact SVD took over
    assert sum(full_svds) == (kind == "gaussian")
    torch.testing.assert_close(St, Se[:10], rtol=1e-6, atol=0)
    assert (Ut.T @ Ue[:, :10]).abs().diagonal().min() > 1 - 1e-6
    torch.manual_seed(456)
    # a fixed start: the same answer whatever the global seed
    Ut2, _ = an.top_singular_vectors(M, 10)
    assert torch.equal(Ut, Ut2)


def test_top_singular_vectors_leave_the_global_rng_alone():
    M = w0_with_tail(96)[3]
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    an.top_singular_vectors(M, 10)
    assert torch.equal(torch.rand(3), expected)


def test_bad_updates_are_one_line_errors():
    cases = [
        (lambda: an.singular_values(torch.empty(0, 5)), "is empty"),
        (lambda: an.singular_values(torch.tensor([[1.0, float("nan")]])), "NaN/inf"),
        (
            lambda: an.singular_values((torch.ones(4, 2), torch.full((2, 3), float("inf")))),
            "NaN/inf",
        ),
        (lambda: an.singular_values((torch.zeros(4, 0), torch.zeros(0, 3))), "is empty"),
        (lambda: an.singular_values(torch.zeros(3, 3)), "all zeros"),
        (lambda: an.singular_values((torch.ones(4, 2), torch.zeros(2, 3))), "all zeros"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            call()
        assert "\n" not in str(e.value)


# --- checkpoints in train.py's format, built in-process -----------------------------------


def tiny_base(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TINY))


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def save(path, ckpt):
    torch.save(ckpt, path)
    return str(path)


def adapter_ckpt(path, base, method, cat_skills=(), **opts):
    """An adapter run over `base` with random factors, saved as train.py saves it."""
    m = copy.deepcopy(base)
    ad.add_adapters(
        m, method, *ad.load_cat_skills(list(cat_skills), m)
    ) if cat_skills else ad.add_adapters(m, method, **opts)
    randomize(m, seed=len(str(path)))
    ad.save_adapter_checkpoint(
        str(path), m, base={"path": "base.pt", "fingerprint": base.fingerprint()}
    )
    return str(path), m


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A base, a full fine-tune and one run of each adapter method over it, as train.py writes them."""
    d = tmp_path_factory.mktemp("ck")
    base = tiny_base()
    paths = {
        "base": save(
            d / "base.pt", {"model_args": vars(base.config).copy(), "model": base.state_dict()}
        )
    }
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    paths["full"] = save(
        d / "full.pt",
        {
            "model_args": vars(base.config).copy(),
            "model": ft.state_dict(),
            "base": {"path": paths["base"], "fingerprint": base.fingerprint()},
        },
    )
    models = {"full": ft}
    for name, opts in {
        "lora": dict(r=4),
        "multilora": dict(n=2, r=2),
        "nola": dict(k=8, l=8, r=4),
    }.items():
        os.makedirs(d / name)
        paths[name], models[name] = adapter_ckpt(d / name / "ckpt.pt", base, name, **opts)
    skills = [adapter_ckpt(d / f"skill{i}.pt", base, "lora", r=2)[0] for i in range(2)]
    os.makedirs(d / "cat")
    paths["cat"], models["cat"] = adapter_ckpt(
        d / "cat" / "ckpt.pt", base, "cat", cat_skills=skills
    )
    for s in skills:
        # a CAT checkpoint is self-contained: the skill files are not needed to analyse it
        os.remove(s)
    other = tiny_base(seed=1)
    paths["other_lora"] = adapter_ckpt(d / "other.pt", other, "lora", r=4)[0]
    return d, base, paths, models


def test_real_checkpoint_formats(ckpts, capsys):
    d, base, paths, models = ckpts
    result = an.main(
        [
            f"--base={paths['base']}",
            paths["lora"],
            paths["multilora"],
            paths["nola"],
            paths["cat"],
            paths["full"],
            f"--out={d / 'res'}",
        ]
    )
    runs = {r["label"]: r for r in result["runs"]}
    assert list(runs) == ["lora", "multilora", "nola", "cat", "full"]
    names = [f"transformer.h.{i}.attn.{k}" for i in range(2) for k in "qv"]
    assert result["settings"]["matrices"] == names
    for method in ("lora", "multilora", "nola", "cat"):
        m = models[method]
        assert runs[method]["trainable_params"] == sum(
            p.numel() for p in m.parameters() if p.requires_grad
        )
        for n, mod in ad.adapted_modules(m).items():  # the spectrum is the adapter's own ΔW's
            dense = torch.linalg.svdvals(mod.delta_weight().detach().double())
            got = torch.tensor(runs[method]["matrices"][n]["sigma"], dtype=torch.float64)
            torch.testing.assert_close(
                got, dense[: len(got)], rtol=1e-4, atol=1e-5 * dense[0].item()
            )
    assert runs["multilora"]["trainable_params"] == 4 * (2 * 2 * 64 + 2)
    sd0, sd1 = base.state_dict(), models["full"].state_dict()
    assert runs["full"]["trainable_params"] == sum(p.numel() for p in base.parameters())
    for n in names:
        dense = torch.linalg.svdvals((sd1[n + ".weight"] - sd0[n + ".weight"]).double())
        got = torch.tensor(runs["full"]["matrices"][n]["sigma"], dtype=torch.float64)
        torch.testing.assert_close(got, dense, rtol=1e-4, atol=1e-6)
    out = capsys.readouterr().out
    assert "effective rank" in out and "wrote" in out
    assert os.path.exists(d / "res.json") and (
        os.path.exists(d / "res.png") or os.path.exists(d / "res.txt")
    )
    # an explicit choice of matrices: full names or suffixes
    res = an.run(
        paths["base"], [paths["full"]], "transformer.h.1.mlp.c_fc,attn.k", out=str(d / "r2")
    )[0]
    assert res["settings"]["matrices"] == [
        f"transformer.h.{n}" for n in ("0.attn.k", "1.attn.k", "1.mlp.c_fc")
    ]


def test_json_holds_the_numbers_of_the_table(ckpts):
    d, base, paths, _ = ckpts
    result, table, files = an.run(paths["base"], [paths["lora"], paths["full"]], out=str(d / "tj"))
    with open(files[0]) as f:
        saved = json.load(f)
    assert saved["runs"][0]["matrices"] == result["runs"][0]["matrices"]
    summary = table.split("\n\n")[0].splitlines()[2:]
    rows = {line.split()[0]: line for line in summary}
    assert len(rows) == 2
    for r in saved["runs"]:
        a = r["aggregate"]
        nums = re.findall(r"-?\d[\d,]*\.?\d*", rows[r["label"]])
        expect = [
            f"{r['trainable_params']:,}",
            str(a["n_matrices"]),
            f"{a['effective_rank_mean']:.2f}",
            f"{a['effective_rank_std']:.2f}",
            f"{a['energy_rank_mean']:.2f}",
            f"{a['top_share_mean']:.3f}",
            f"{a['rel_norm_mean']:.4f}",
        ]
        expect += [f"{a['intruders_per_matrix'][str(e)]:.2f}" for e in saved["settings"]["eps"]]
        assert nums == expect
        for kind, by_layer in a["effective_rank_by_layer"].items():  # the per-layer rows
            cells = next(
                line for line in table.splitlines() if line.startswith(f"{r['label']} {kind} ")
            )
            assert cells.split()[2:] == [f"{by_layer[str(i)]:.2f}" for i in range(2)]
        # and the aggregate is the mean of the per-matrix numbers
        m = r["matrices"]["transformer.h.0.attn.q"]
        assert a["effective_rank_mean"] == pytest.approx(
            sum(x["effective_rank"] for x in r["matrices"].values()) / 4
        )
        assert m["cumulative_energy"][-1] == pytest.approx(1.0) and m["normalized"][0] == 1.0


def test_text_chart_without_matplotlib(ckpts, monkeypatch):
    d, base, paths, _ = ckpts
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result, _, files = an.run(paths["base"], [paths["lora"], paths["full"]], out=str(d / "txt"))
    assert files[1].endswith(".txt")
    chart = open(files[1]).read()
    assert "lora (" in chart and f"{result['runs'][1]['trainable_params']:,} trainable" in chart
    assert re.search(r"\|@", chart)  # σ_1/σ_1 = 1 is the full bar


def test_out_dirs_are_read_as_their_ckpt_pt(ckpts, capsys):
    """--base and the results may be train.py out_dirs: the same numbers as their ckpt.pt, and the
    first line says what was loaded."""
    d, base, paths, _ = ckpts
    os.makedirs(d / "base_run", exist_ok=True)
    shutil.copy(paths["base"], d / "base_run" / "ckpt.pt")
    by_file = an.main([f"--base={paths['base']}", paths["lora"], paths["full"], f"--out={d / 'f'}"])
    capsys.readouterr()
    by_dir = an.main(
        [f"--base={d / 'base_run'}", str(d / "lora"), paths["full"], f"--out={d / 'o'}"]
    )
    out = capsys.readouterr().out
    assert out.startswith(
        f"base: {d / 'base_run' / 'ckpt.pt'} (a train.py checkpoint, "
        f"{sum(p.numel() for p in base.parameters()):,} parameters, fingerprint {base.fingerprint()})"
    )
    assert [r["path"] for r in by_dir["runs"]] == [str(d / "lora" / "ckpt.pt"), paths["full"]]
    assert [r["matrices"] for r in by_dir["runs"]] == [r["matrices"] for r in by_file["runs"]]
    assert by_dir["base"]["fingerprint"] == by_file["base"]["fingerprint"] == base.fingerprint()


def test_default_output_goes_under_out(ckpts, tmp_path, monkeypatch, capsys):
    d, base, paths, _ = ckpts
    monkeypatch.chdir(tmp_path)
    an.main([f"--base={paths['base']}", paths["lora"]])
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing in the working directory itself
    written = sorted(os.listdir(tmp_path / "out" / "analysis"))
    assert written in (["spectra.json", "spectra.png"], ["spectra.json", "spectra.txt"])
    assert f"wrote out/analysis/spectra.json, out/analysis/{written[1]}" in capsys.readouterr().out


def test_one_line_errors_for_bad_inputs(ckpts, tmp_path):
    d, base, paths, _ = ckpts
    os.makedirs(tmp_path / "empty_dir")
    (tmp_path / "truncated.pt").write_bytes(open(paths["lora"], "rb").read()[:200])
    missing, empty, truncated = (
        str(tmp_path / n) for n in ("missing.pt", "empty_dir", "truncated.pt")
    )
    cases = [  # (base, results, matrices, error, key words in the message)
        (
            paths["base"],
            [paths["lora"], paths["other_lora"]],
            "",
            ValueError,
            [
                f"{paths['other_lora']} was fine-tuned from base base.pt",
                "not from --base",
                "pass --base=base.pt",
            ],
        ),
        (
            paths["base"],
            [paths["lora"]],
            "attn.nope",
            ValueError,
            ["--matrices=attn.nope", "'attn.nope'"],
        ),
        (
            paths["base"],
            [missing],
            "",
            FileNotFoundError,
            [f"result {missing} does not exist", "out_dir"],
        ),
        (
            paths["base"],
            [empty],
            "",
            FileNotFoundError,
            [f"result {empty} is a directory without ckpt.pt:"],
        ),
        (paths["base"], [truncated], "", ValueError, [truncated, "not a loadable checkpoint"]),
        (
            paths["base"],
            [paths["base"]],
            "",
            ValueError,
            [f"{paths['base']} records no base", "pretraining"],
        ),
        (
            empty,
            [paths["lora"]],
            "",
            FileNotFoundError,
            [
                f"--base {empty} is a directory without ckpt.pt or config.json",
                "Hugging Face GPT-2 directory",
            ],
        ),
        (missing, [paths["lora"]], "", FileNotFoundError, [f"--base {missing} does not exist"]),
        (
            paths["lora"],
            [paths["full"]],
            "",
            ValueError,
            ["--base:", paths["lora"], "not a full-model checkpoint"],
        ),
    ]
    for base_path, results, matrices, err, words in cases:
        with pytest.raises(err) as e:
            an.run(base_path, results, matrices, out=str(tmp_path / "x"))
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    assert not os.path.exists(tmp_path / "x.json")  # a refused input writes nothing
    bad = torch.load(paths["full"], weights_only=True)
    bad["model"]["transformer.h.0.attn.q.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"ΔW of transformer.h.0.attn.q in full has NaN/inf"):
        an.run(paths["base"], [save(tmp_path / "nan.pt", bad)], out=str(tmp_path / "x"))


def test_command_line_error_is_one_line_without_traceback(ckpts, tmp_path):
    d, base, paths, _ = ckpts
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run(
        [sys.executable, os.path.join(root, "analyze.py"), f"--base={tmp_path}", paths["lora"]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and p.stdout == ""
    assert (
        p.stderr
        == f"analyze.py: --base {tmp_path} is a directory without ckpt.pt or config.json: give a "
        "train.py out_dir (holding ckpt.pt) or its ckpt.pt, or a Hugging Face GPT-2 directory "
        "(holding config.json) or name\n"
    )
    assert os.listdir(tmp_path) == []


def test_bench_spectra_metrics_match_an_independent_svd(capsys):
    """bench.py --spectra's numbers for planted updates of known rank, recomputed here from scratch in
    float64: singular values, effective rank, energy rank, top share, norm ratio and intruders."""
    result = bench.bench_spectra(n_layer=2, d=64)
    out = capsys.readouterr().out
    assert "spectra: 4 matrices (2 layers x q,v, 64x64) x 5 methods" in out
    # rank-8 random factors: effective rank just under 8
    assert re.search(r"^lora\s+4,096\s+4\s+7\.\d\d", out, re.M)
    base, runs = bench.spectra_inputs(n_layer=2, d=64)
    rank = {"lora": 8, "multilora": 24, "nola": 8, "cat": 16, "full": 64}
    assert [r["label"] for r in result["runs"]] == list(rank)
    for r, got in zip(runs, result["runs"]):
        for name, u in r["updates"].items():
            W0 = base[name].double()
            dW = u[0].double() @ u[1].double() if isinstance(u, tuple) else u.double()
            s = torch.linalg.svdvals(dW)[: rank[r["method"]]]
            m = got["matrices"][name]
            torch.testing.assert_close(
                torch.tensor(m["sigma"], dtype=torch.float64), s, rtol=1e-4, atol=1e-5 * s[0].item()
            )
            p, energy = s / s.sum(), (s**2).cumsum(0) / (s**2).sum()
            assert m["effective_rank"] == pytest.approx(
                math.exp(-(p * p.log()).sum().item()), rel=1e-5
            )
            assert m["effective_rank"] < rank[r["method"]] - 0.1
            assert m["energy_rank"] == next(
                i + 1 for i, e in enumerate(energy.tolist()) if e >= 0.9
            )
            assert m["top_share"] == pytest.approx(energy[0].item(), rel=1e-5)
            assert m["rel_norm"] == pytest.approx((dW.norm() / W0.norm()).item(), rel=1e-5)
            U0 = torch.linalg.svd(W0)[0]
            max_cos = (U0.T @ torch.linalg.svd(W0 + dW)[0][:, :10]).abs().amax(0)
            assert (
                torch.tensor(m["intruder_max_cos"], dtype=torch.float64) - max_cos
            ).abs().max() < 1e-4
            assert m["intruders"] == {str(e): int((max_cos < e).sum()) for e in (0.3, 0.5, 0.7)}
        a = got["aggregate"]
        assert a["effective_rank_mean"] == pytest.approx(
            sum(m["effective_rank"] for m in got["matrices"].values()) / 4
        )
