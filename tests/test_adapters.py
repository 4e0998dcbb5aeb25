"""adapters.py: the shared protocol for every method, each method's own claims, the public API's errors."""

import copy
import hashlib
import inspect
import os

import pytest
import torch
import torch.nn as nn

import adapters as ad
from model import GPT, GPTConfig
from study import baselines

torch.set_num_threads(1)
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
VARIANTS = {  # name -> (method, options)
    "lora": ("lora", dict(r=4, alpha=8.0)),
    "lora_rslora": ("lora", dict(r=4, alpha=8.0, rslora=True)),
    "multilora": ("multilora", dict(n=3, r=2)),
    "multilora_channel": ("multilora", dict(n=3, r=2, gate="channel")),
    "nola": ("nola", dict(k=8, l=6, r=4)),
    "nola_stored": ("nola", dict(k=8, l=6, r=4, stored_basis=True)),
}


def tiny_base(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **kw}))


def randomize(model, std=0.3, seed=1):
    """Move the trainable parameters off their init so that ΔW != 0 and every factor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def save_ckpt(path, model, base):
    return ad.save_adapter_checkpoint(
        path, model, {"path": "tiny", "fingerprint": base.fingerprint()}
    )


def skill(tmp_path, base, name, r, seed, targets="attn.q,attn.v"):
    m = copy.deepcopy(base)
    ad.add_adapters(m, "lora", targets=targets, r=r, alpha=2.0 * r)
    randomize(m, seed=seed)
    return save_ckpt(str(tmp_path / f"{name}.pt"), m, base)


@pytest.fixture
def cat_model(tmp_path):
    base = tiny_base()
    paths = [skill(tmp_path, base, "s1", 2, 1), skill(tmp_path, base, "s2", 4, 2)]
    m = copy.deepcopy(base)
    ad.add_adapters(m, "cat", *ad.load_cat_skills(paths, m))
    return m, base, paths


def adapted(variant, seed=1):
    method, opts = VARIANTS[variant]
    base = tiny_base()
    m = copy.deepcopy(base)
    ad.add_adapters(m, method, **opts)
    return m, base


# --- the shared protocol, every method ---------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_delta_zero_at_init_and_model_unchanged(variant):
    m, base = adapted(variant)
    idx = torch.randint(0, 50, (2, 16))
    for mod in ad.adapted_modules(m).values():
        assert mod.delta_weight().abs().max().item() == 0.0
    torch.testing.assert_close(m(idx)[0], base(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("variant", [*VARIANTS, "cat"])
def test_forward_is_base_plus_x_deltaT(variant, cat_model):
    m = cat_model[0] if variant == "cat" else adapted(variant)[0]
    randomize(m)
    x = torch.randn(3, 5, 32)
    for name, mod in ad.adapted_modules(m).items():
        dW = mod.delta_weight()
        assert dW.dtype == torch.float32 and dW.shape == mod.base.weight.shape
        assert dW.abs().max() > 1e-3, name
        torch.testing.assert_close(mod(x), mod.base(x) + x @ dW.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", [*VARIANTS, "cat"])
def test_merge_unmerge_restores_weights_and_outputs(variant, cat_model):
    m = cat_model[0] if variant == "cat" else adapted(variant)[0]
    randomize(m)
    idx = torch.randint(0, 50, (2, 16))
    w0 = {n: mod.base.weight.clone() for n, mod in ad.adapted_modules(m).items()}
    out = m(idx)[0]
    m.eval(), m.train()  # never merges by itself (the loralib pitfall)
    assert not any(mod.merged for mod in ad.adapted_modules(m).values())
    ad.merge_adapters(m)
    ad.merge_adapters(m)  # idempotent: merging twice adds ΔW once
    for n, mod in ad.adapted_modules(m).items():
        torch.testing.assert_close(mod.base.weight, w0[n] + mod.delta_weight(), rtol=0, atol=1e-6)
    torch.testing.assert_close(m(idx)[0], out, rtol=1e-5, atol=1e-5)
    ad.unmerge_adapters(m)
    ad.unmerge_adapters(m)
    for n, mod in ad.adapted_modules(m).items():
        assert (mod.base.weight - w0[n]).abs().max().item() <= 1e-6
    torch.testing.assert_close(m(idx)[0], out, rtol=1e-5, atol=1e-6)
    plain = ad.merge_and_unload(m)
    assert not ad.adapted_modules(plain) and type(plain.transformer.h[0].attn.q) is nn.Linear
    torch.testing.assert_close(plain(idx)[0], out, rtol=1e-5, atol=1e-5)


def test_merge_in_fp32_then_cast_for_bf16_base():
    m, _ = adapted("lora")
    randomize(m)
    mod = ad.adapted_modules(m)["transformer.h.0.attn.q"].to(torch.bfloat16)
    w0 = mod.base.weight.clone()
    expected = (w0.float() + mod.delta_weight()).to(torch.bfloat16)
    mod.merge()
    assert mod.base.weight.dtype == torch.bfloat16 and torch.equal(mod.base.weight, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_merge_inside_autocast_still_sums_in_fp32(variant):
    """train.py evaluates in the training precision: a merge entered under bf16 autocast must not
    compute B @ A in bf16 (that would put ~1e-3 errors into every merged W0)."""
    m, _ = adapted(variant)
    randomize(m)
    mods = ad.adapted_modules(m).values()
    expected = [(mod.base.weight + mod.delta_weight()).clone() for mod in mods]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ad.merge_adapters(m)
    for mod, w in zip(mods, expected):
        assert torch.equal(mod.base.weight, w)


def test_to_lora_without_adapters_is_one_line():
    with pytest.raises(ValueError, match="no adapters"):
        ad.to_lora(tiny_base())


@pytest.mark.parametrize("variant", [*VARIANTS, "cat"])
def test_only_adapter_parameters_train(variant, cat_model):
    m = cat_model[0] if variant == "cat" else adapted(variant)[0]
    randomize(m)
    idx = torch.randint(0, 50, (2, 16))
    m(idx, idx)[1].backward()
    adapter_keys = set(ad.adapter_state_dict(m))
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert name in adapter_keys and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and name not in adapter_keys, name
    assert sum(p.requires_grad for p in m.parameters()) > 0


def test_dropout_zero_is_identity_and_dropout_only_touches_branch():
    lin = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    lo = ad.LoRALinear(lin, r=2, dropout=0.0)
    assert lo.dropout(x) is x
    lo = ad.LoRALinear(lin, r=2, dropout=0.5)
    torch.testing.assert_close(lo(x), lin(x))  # B = 0: dropout on the branch cannot touch base(x)


def gpt2_small_meta():
    with torch.device("meta"):  # shapes only: no 124M parameters allocated
        return GPT(GPTConfig())


@pytest.mark.parametrize(
    "method,opts,expected",
    [
        ("lora", dict(r=4), 36_864 * 4),
        ("lora", dict(r=8), 36_864 * 8),
        ("multilora", dict(n=3, r=2), 36_864 * 3 * 2 + 24 * 3),
        ("multilora", dict(n=2, r=4), 36_864 * 2 * 4 + 24 * 2),
        ("nola", dict(k=64, l=32), 24 * (64 + 32)),
        ("cat", dict(ranks=[4, 8, 2]), 24 * 3),
    ],
)
def test_trainable_counts_gpt2_small(method, opts, expected):
    m = gpt2_small_meta()
    summary = ad.add_adapters(m, method, **opts)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == expected
    assert f"trainable {expected:,} /" in summary and "\n" not in summary
    assert len(ad.adapted_modules(m)) == 24


# --- MultiLoRA -----------------------------------------------------------------


def test_multilora_is_sum_of_gated_modules():
    m, _ = adapted("multilora")
    randomize(m)
    mod = ad.adapted_modules(m)["transformer.h.1.attn.v"]
    r, s = mod.r, mod.scale
    expected = sum(
        mod.gate[i] * s * mod.lora_B[:, i * r : (i + 1) * r] @ mod.lora_A[i * r : (i + 1) * r]
        for i in range(mod.n)
    )
    torch.testing.assert_close(mod.delta_weight(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_multilora_init_b_nonzero_and_only_gates_move_first():
    m, _ = adapted("multilora")
    idx = torch.randint(0, 50, (2, 16))
    m(idx, idx)[1].backward()
    for mod in ad.adapted_modules(m).values():
        assert mod.lora_B.abs().sum() > 0 and mod.lora_A.abs().sum() > 0
        assert mod.gate.grad.abs().sum() > 0
        assert mod.lora_A.grad.abs().max() == 0 and mod.lora_B.grad.abs().max() == 0


# --- NOLA ------------------------------------------------------------------------


def test_nola_mixbases_gradcheck_float64():
    coef = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: ad.MixBases.apply(c, 1234, (3, 4)), (coef,))


def test_nola_regenerated_equals_stored_forward_and_grads_float64():
    base = nn.Linear(12, 10).double()
    x = torch.randn(4, 12, dtype=torch.float64)
    mods = [ad.NOLALinear(base, k=7, l=5, r=3, seed=3, stored_basis=s) for s in (False, True)]
    g = torch.Generator().manual_seed(0)
    coefs = [
        torch.randn(7, generator=g, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64),
    ]
    outs, grads = [], []
    for mod in mods:
        with torch.no_grad():
            mod.coef_A.copy_(coefs[0]), mod.coef_B.copy_(coefs[1])
        y = mod(x)
        (y**2).sum().backward()
        outs.append(y.detach())
        grads.append((mod.coef_A.grad, mod.coef_B.grad))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # d loss / d(α, β) through the regenerated path (MixBases.backward) on a loss that needs both factors
    a, b = (c.clone().requires_grad_() for c in coefs)
    loss = lambda a, b: (
        torch.func.functional_call(mods[0], {"coef_A": a, "coef_B": b}, (x,)).sin().sum()
    )
    assert torch.autograd.gradcheck(loss, (a, b))


def test_nola_reload_from_seeds_and_coefficients():
    m, base = adapted("nola")
    randomize(m)
    idx = torch.randint(0, 50, (2, 16))
    out = m(idx)[0]
    sd = ad.adapter_state_dict(m)
    assert all(k.endswith(("coef_A", "coef_B", "seed_A", "seed_B")) for k in sd)  # no bases stored
    fresh = copy.deepcopy(base)
    cfg = ad.adapter_config(m)
    ad.add_adapters(fresh, cfg.pop("method"), **{**cfg, "seed": 999})  # the checkpoint's seeds win
    ad.load_adapter_state_dict(fresh, sd)
    torch.testing.assert_close(fresh(idx)[0], out, rtol=0, atol=0)


def test_nola_seeds_differ_and_global_rng_untouched():
    m, _ = adapted("nola")
    seeds = [
        int(getattr(mod, s)) for mod in ad.adapted_modules(m).values() for s in ("seed_A", "seed_B")
    ]
    assert len(set(seeds)) == len(seeds) == 8
    randomize(m)
    state = torch.get_rng_state()
    m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    assert torch.equal(torch.get_rng_state(), state)


def sha256_of(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_seeds_bases_and_offsets_are_pinned():
    # The values below were computed before the seed derivation was gathered into one helper: an old
    # NOLA checkpoint (seeds + coefficients) or a CAT softmax run must rebuild the same tensors.
    m, _ = adapted("nola_stored")
    mods = ad.adapted_modules(m)
    assert [(int(mod.seed_A), int(mod.seed_B)) for mod in mods.values()] == [
        (8585448059503289805, 5637660738115896988),
        (8233493161508352623, 5948562772882035816),
        (991265840860482407, 5594022293670767923),
        (3244848599476819262, 1172793319934055197),
    ]
    v = mods["transformer.h.1.attn.v"]
    assert v.A0[0, :3].tolist() == [0.1745290458202362, -0.08344003558158875, 0.032384373247623444]
    assert v.basis_A[7, 3, -2:].tolist() == [-0.08155751973390579, -0.26466238498687744]
    assert v.basis_B[5, -1, :2].tolist() == [0.13014337420463562, 0.34352460503578186]
    frozen = [t for mod in mods.values() for t in (mod.A0, mod.basis_A, mod.basis_B)]
    assert sha256_of(frozen) == "418c3621caa43bb99e356c5d38807778d402e7f80d541cafb4ae76572aa5adaf"
    m, _ = adapted("nola")  # the default path regenerates the same bases in MixBases
    factors = []
    for mod in ad.adapted_modules(m).values():
        with torch.no_grad():
            mod.coef_A.fill_(1.0), mod.coef_B.fill_(1.0)
        factors += mod.low_rank()
    assert sha256_of(factors) == "a2cfa60ee8d5f00a7bc60b269126ff3fff7e61e9730b591dbf01ce94282c86d5"
    m = tiny_base()
    ad.add_adapters(m, "cat", ranks=[2, 4], weights="softmax")  # each module its own logits
    assert [mod.cat_w.tolist() for mod in ad.adapted_modules(m).values()] == [
        [-2.845759630203247, -0.42013809084892273],
        [0.8618931770324707, 1.0935829877853394],
        [-0.32780593633651733, 1.3937841653823853],
        [-0.3826775848865509, 1.5219835042953491],
    ]


@pytest.mark.parametrize("variant", ["nola", "multilora_channel"])
def test_merged_evaluation_equals_unmerged_and_restores_w0_exactly(variant):
    # evaluation (train.py's final eval, study.py) generates inside merged(model): same answers as the
    # unmerged adapter, and afterwards the same adapter, W0 bit for bit, whatever happened inside
    m, _ = adapted(variant)
    randomize(m)
    mods = list(ad.adapted_modules(m).values())
    w0 = [mod.base.weight.clone() for mod in mods]
    x = torch.randint(0, TINY["vocab_size"], (3, 5))
    with torch.no_grad():
        logits, tokens = m(x)[0], m.generate(x, 8, temperature=0.0)
        with ad.merged(m):
            assert all(mod.merged for mod in mods) and not torch.equal(mods[0].base.weight, w0[0])
            merged_logits, merged_tokens = m(x)[0], m.generate(x, 8, temperature=0.0)
    torch.testing.assert_close(merged_logits, logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(merged_tokens, tokens)
    assert not any(mod.merged for mod in mods)
    assert all(torch.equal(mod.base.weight, w) for mod, w in zip(mods, w0))
    with pytest.raises(KeyError), ad.merged(m):
        raise KeyError("an error inside the block")
    assert not any(mod.merged for mod in mods)
    assert all(torch.equal(mod.base.weight, w) for mod, w in zip(mods, w0))


def test_nola_4bit_export_is_close_and_small():
    m, base = adapted("nola")
    randomize(m)
    sd4 = baselines.quantize_nola_state(ad.adapter_state_dict(m))
    q = sd4["transformer.h.0.attn.q.coef_A_q4"]
    assert q.dtype == torch.uint8 and q.numel() == 4  # k=8 coefficients in 4 bytes
    fresh = copy.deepcopy(base)
    ad.add_adapters(fresh, "nola", **VARIANTS["nola"][1])
    ad.load_adapter_state_dict(fresh, baselines.dequantize_nola_state(sd4, fresh))
    for n, mod in ad.adapted_modules(m).items():
        c, c4 = mod.coef_A.detach(), ad.adapted_modules(fresh)[n].coef_A.detach()
        assert (c - c4).abs().max() <= c.abs().max() / 14 + 1e-7  # half a quantisation step
        err = (
            ad.adapted_modules(fresh)[n].delta_weight() - mod.delta_weight()
        ).norm() / mod.delta_weight().norm()
        assert 0 < err < 0.2


# --- CAT ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["plain", "softmax"])
def test_cat_delta_is_weighted_sum_of_skill_loras(tmp_path, weights):
    base = tiny_base()
    paths = [skill(tmp_path, base, "s1", 2, 1), skill(tmp_path, base, "s2", 4, 2)]
    m = copy.deepcopy(base)
    ad.add_adapters(m, "cat", *ad.load_cat_skills(paths, m), weights=weights)
    randomize(m)
    skills = [baselines.lora_deltas(p) for p in paths]  # s_i B_i A_i from the files
    for name, mod in ad.adapted_modules(m).items():
        w = mod.weights().detach()
        if weights == "softmax":
            assert abs(w.sum().item() - 1) < 1e-6
        expected = sum(w[i] * skills[i][name] for i in range(2))
        torch.testing.assert_close(mod.delta_weight(), expected, rtol=1e-5, atol=1e-6)


def test_cat_plain_starts_at_sum_and_exports_as_one_lora(cat_model, tmp_path):
    m, base, paths = cat_model
    skills = [baselines.lora_deltas(p) for p in paths]
    for name, mod in ad.adapted_modules(m).items():
        torch.testing.assert_close(
            mod.delta_weight(), skills[0][name] + skills[1][name], rtol=1e-5, atol=1e-6
        )
    randomize(m)
    idx = torch.randint(0, 50, (2, 16))
    out = m(idx)[0]
    # self-contained checkpoint: reloads without the skill files
    ck = save_ckpt(str(tmp_path / "cat.pt"), m, base)
    for p in paths:
        os.remove(p)
    again = copy.deepcopy(base)
    ad.load_adapter_checkpoint(ck, again)
    torch.testing.assert_close(again(idx)[0], out, rtol=0, atol=0)
    ad.to_lora(m)  # one ordinary LoRA of rank Σ r_i = 6
    assert ad.adapter_config(m)["method"] == "lora" and ad.adapter_config(m)["r"] == 6
    assert all(mod.lora_A.shape == (6, 32) for mod in ad.adapted_modules(m).values())
    torch.testing.assert_close(m(idx)[0], out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ad.merge_and_unload(m)(idx)[0], out, rtol=1e-5, atol=1e-5)


# --- merge baselines ---------------------------------------------------------------


def test_ties_and_mean_by_hand():
    d1 = {"w": torch.tensor([[4.0, -1.0, 0.5, 2.0]])}
    d2 = {"w": torch.tensor([[-3.0, -2.0, 0.1, 1.0]])}
    ties = baselines.merge_deltas([d1, d2], "ties", density=0.5)["w"]
    torch.testing.assert_close(ties, torch.tensor([[4.0, -2.0, 0.0, 2.0]]))
    mean = baselines.merge_deltas([d1, d2], "mean")["w"]
    torch.testing.assert_close(mean, torch.tensor([[0.5, -1.5, 0.3, 1.5]]))


def test_apply_deltas_adds_into_plain_model(cat_model):
    _, base, paths = cat_model
    deltas = baselines.merge_deltas([baselines.lora_deltas(p) for p in paths], "mean")
    m = baselines.apply_deltas(copy.deepcopy(base), deltas)
    w = m.transformer.h[1].attn.v.weight
    torch.testing.assert_close(
        w, base.transformer.h[1].attn.v.weight + deltas["transformer.h.1.attn.v"]
    )


# --- errors: one line each ---------------------------------------------------------


def one_line_error(exc, match, fn, *a, **kw):
    with pytest.raises(exc, match=match) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "method,opts,match",
    [
        ("lora", dict(r=0), "r must be a positive integer, got 0"),
        ("multilora", dict(n=0), "n must be a positive integer"),
        ("multilora", dict(r=-1), "r must be a positive integer"),
        ("nola", dict(k=0), "k must be a positive integer"),
        ("nola", dict(l=0), "l must be a positive integer"),
        ("dora", {}, "unknown adapter method 'dora'"),
        (
            "lora",
            dict(rank=4),
            r"unknown lora option\(s\) \['rank'\]: known are \['r', 'alpha', 'dropout', 'rslora'\]",
        ),
        (
            "lora",
            dict(k=4),
            r"unknown lora option\(s\) \['k'\]",
        ),  # another method's option is refused too
        ("multilora", dict(gate="row"), "gate must be 'scalar' or 'channel'"),
        ("lora", dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
        ("nola", dict(basis_device="tpu"), "basis_device must be 'cpu' or"),
        ("lora", dict(targets="attn.z"), "matches no nn.Linear"),
        ("lora", dict(targets="lm_head"), "tied to transformer.wte"),
        ("cat", {}, "cat needs its skill LoRAs: .*adapters.load_cat_skills"),
        ("lora", dict(skills={}), "skills are CAT's"),  # never silently ignored
        ("cat", dict(ranks=[2], weights="mean"), "cat weights must be 'plain' or 'softmax'"),
    ],
)
def test_bad_options(method, opts, match):
    one_line_error(ValueError, match, ad.add_adapters, tiny_base(), method, **opts)


def test_double_add_and_missing_config():
    m, _ = adapted("lora")
    one_line_error(ValueError, "already has adapters", ad.add_adapters, m, "lora")
    one_line_error(ValueError, "no adapters", ad.adapter_config, tiny_base())


def test_checkpoint_for_another_base_or_shape(tmp_path):
    m, base = adapted("lora")
    ck = save_ckpt(str(tmp_path / "a.pt"), m, base)
    one_line_error(
        ValueError, "another base model", ad.load_adapter_checkpoint, ck, tiny_base(seed=5)
    )
    one_line_error(
        FileNotFoundError, "no checkpoint at", ad.load_adapter_checkpoint, str(tmp_path / "none.pt")
    )
    torch.save({"model": {}}, tmp_path / "full.pt")
    one_line_error(
        ValueError, "holds no adapter", ad.load_adapter_checkpoint, str(tmp_path / "full.pt")
    )
    wider = tiny_base(n_embd=64)
    ad.add_adapters(wider, "lora", r=4)
    one_line_error(
        ValueError, "shape mismatch", ad.load_adapter_state_dict, wider, ad.adapter_state_dict(m)
    )
    other = tiny_base()
    ad.add_adapters(other, "nola")
    one_line_error(
        ValueError,
        "does not fit this model",
        ad.load_adapter_state_dict,
        other,
        ad.adapter_state_dict(m),
    )
    ok = copy.deepcopy(base)
    ad.load_adapter_checkpoint(ck, ok)  # the right base loads
    idx = torch.randint(0, 50, (1, 8))
    torch.testing.assert_close(ok(idx)[0], m(idx)[0], rtol=0, atol=0)


def test_cat_refuses_mixed_targets_and_non_lora(tmp_path):
    base = tiny_base()
    a = skill(tmp_path, base, "a", 2, 1)
    b = skill(tmp_path, base, "b", 2, 2, targets="attn.q,attn.k")
    one_line_error(ValueError, "same targets", ad.load_cat_skills, [a, b], base)
    n = copy.deepcopy(base)
    ad.add_adapters(n, "nola")
    c = save_ckpt(str(tmp_path / "n.pt"), n, base)
    one_line_error(ValueError, "composes LoRA adapters", ad.load_cat_skills, f"{a},{c}", base)
    one_line_error(ValueError, "another base model", ad.load_cat_skills, [a], tiny_base(seed=3))
    one_line_error(ValueError, "cat needs cat_adapters", ad.load_cat_skills, "", base)
    # skills for other modules than the targets given
    targets, skills = ad.load_cat_skills([a], base)
    one_line_error(
        ValueError,
        "adapt 4 modules, this model has 2",
        ad.add_adapters,
        copy.deepcopy(base),
        "cat",
        "attn.q",
        skills=skills,
    )


# --- options, checkpoints ------------------------------------------------------------


def test_train_py_writes_out_each_class_default():
    # train.py's defaults block spells every adapter option out as <method>_<option>; the class's
    # keyword default in adapters.py is the other copy: the two must never drift apart
    import train

    assert set(ad.METHODS) == {"lora", "multilora", "nola", "cat"}
    for method, cls in ad.METHODS.items():
        sig = inspect.signature(cls).parameters
        defaults = {
            a: p.default for a, p in sig.items() if a != "base" and p.default is not p.empty
        }
        defaults.pop("skills", None)  # CAT's skill tensors: keyword-only, not an option
        assert ad.method_defaults(method) == defaults
        written = {
            k.split("_", 1)[1]: v for k, v in train.DEFAULTS.items() if k.startswith(method + "_")
        }
        written.pop("adapters", None)  # cat_adapters: where CAT's skill LoRAs come from
        assert written == defaults, method
        assert all(type(written[a]) is type(v) for a, v in defaults.items())  # 16.0, not 16
    assert {"lora_r", "multilora_r", "nola_l", "nola_seed", "cat_seed", "cat_weights"} <= set(
        train.DEFAULTS
    )
    assert "cat_ranks" not in train.DEFAULTS and "cat_skills" not in train.DEFAULTS
    assert ad.method_options("cat") == ["ranks", "weights", "seed"]  # ranks: set by the skills
    m, _ = adapted("nola")  # the config records every option, defaults included
    assert ad.adapter_config(m) == {
        "method": "nola",
        "targets": "attn.q,attn.v",
        **ad.method_defaults("nola"),
        "k": 8,
        "l": 6,
        "r": 4,
    }
    assert ad.adapter_config(adapted("lora")[0]) == {
        "method": "lora",
        "targets": "attn.q,attn.v",
        "r": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "rslora": False,
    }


def test_adapter_checkpoint_format_roundtrip(tmp_path):
    m, base = adapted("multilora")
    randomize(m)
    path = ad.save_adapter_checkpoint(
        str(tmp_path / "a.pt"), m, {"path": "b.pt", "fingerprint": base.fingerprint()}, iter_num=7
    )
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"adapter", "base", "model_args", "iter_num"} and raw["iter_num"] == 7
    assert raw["adapter"]["config"]["method"] == "multilora" and raw["model_args"]["n_embd"] == 32
    assert not os.path.exists(path + ".tmp")
    ck = ad.load_adapter_checkpoint(path)
    assert set(ck) == {"config", "state", "base", "model_args"} and ck["base"]["path"] == "b.pt"
    again = copy.deepcopy(base)
    ad.load_adapter_checkpoint(path, again)
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(again(idx)[0], m(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", os.urandom(64), "hostile"])
def test_damaged_or_hostile_adapter_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "skill.pt"
    if content == "hostile":  # a pickle that would run code on load

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'pwned'}",))

        torch.save({"adapter": Evil()}, path)
    else:
        path.write_bytes(content)
    one_line_error(
        ValueError, f"{path}: not a loadable checkpoint", ad.load_adapter_checkpoint, str(path)
    )
    one_line_error(
        ValueError,
        f"{path}: not a loadable checkpoint",
        ad.load_cat_skills,
        [str(path)],
        tiny_base(),
    )
    assert not (tmp_path / "pwned").exists()
