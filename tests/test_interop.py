"""formats/interop.py against the real libraries: adapters exported here load in PEFT, merged models in
transformers, and PEFT-trained LoRAs import here, each giving the same logits to 1e-5 (fp32)."""

import json
import os

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="the interop tests need transformers (requirements-dev.txt)"
)
peft = pytest.importorskip("peft", reason="the interop tests need peft (requirements-dev.txt)")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import adapters  # noqa: E402
from formats import interop  # noqa: E402
from formats.checkpoint import write_checkpoint  # noqa: E402
from formats.safetensors import read_safetensors, write_safetensors  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

TOL = 1e-5
ALL = "attn.q,attn.k,attn.v,attn.c_proj,mlp.c_fc,mlp.c_proj"
IDX = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A small random GPT-2 written by transformers itself (biases and LayerNorms made non-trivial)."""
    path = str(tmp_path_factory.mktemp("hf") / "gpt2-tiny")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=101, n_positions=32))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(path)
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    return path


def hf_model(path):
    return GPT2LMHeadModel.from_pretrained(path).eval()


def logits(model):
    with torch.no_grad():
        out = model(IDX)
    return out[0] if isinstance(out, tuple) else out.logits


def randomize(model, seed=0):
    """Non-zero values for every trainable adapter tensor (B, gates, coefficients, CAT weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def adapted(base_dir, method, targets, seed=0, **opts):
    model = GPT.from_pretrained(base_dir).eval()
    adapters.add_adapters(model, method, targets=targets, **opts)
    return randomize(model, seed)


def save(model, path, base_dir):
    fingerprint = GPT.from_pretrained(base_dir).fingerprint()
    interop.save_adapter(str(path), model, {"path": base_dir, "fingerprint": fingerprint})
    return str(path)


def peft_round_trip(model, base_dir, tmp_path):
    """Max |logit difference| project vs PEFT, unmerged and after PEFT's merge_and_unload."""
    ckpt = save(model, tmp_path / "ckpt.pt", base_dir)
    interop.main(["export-peft", ckpt, str(tmp_path / "peft")])
    ours = logits(model)
    pm = PeftModel.from_pretrained(hf_model(base_dir), str(tmp_path / "peft")).eval()
    unmerged = logits(pm)
    merged = logits(pm.merge_and_unload())
    return (ours - unmerged).abs().max().item(), (ours - merged).abs().max().item(), ours


@pytest.mark.parametrize(
    "method,targets,opts",
    [
        ("lora", "attn.q,attn.v", dict(r=4, alpha=8.0)),
        ("lora", ALL, dict(r=3, alpha=6.0)),  # c_attn at rank 9, the others at 3: rank_pattern
        ("lora", "attn.q,attn.k,mlp.c_proj", dict(r=4, alpha=8.0, rslora=True)),
        ("multilora", "attn.v,mlp.c_fc", dict(n=2, r=2, alpha=4.0)),
        ("nola", "attn.q,attn.v,attn.c_proj", dict(k=8, l=8, r=2, alpha=4.0)),
    ],
    ids=["lora-qv", "lora-all", "rslora", "multilora", "nola"],
)
def test_exported_adapter_loads_in_peft_with_same_logits(base_dir, tmp_path, method, targets, opts):
    model = adapted(base_dir, method, targets, **opts)
    base_logits = logits(GPT.from_pretrained(base_dir).eval())
    unmerged, merged, ours = peft_round_trip(model, base_dir, tmp_path)
    print(f"{method} {targets}: max |Δlogit| PEFT {unmerged:.2e}, PEFT merged {merged:.2e}")
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter does change the model
    assert unmerged < TOL and merged < TOL
    cfg = json.load(open(tmp_path / "peft" / "adapter_config.json"))
    assert cfg["fan_in_fan_out"] is True and cfg["peft_type"] == "LORA"
    sd = read_safetensors(str(tmp_path / "peft" / "adapter_model.safetensors"))
    A, B = (
        sd["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"],
        sd["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"],
    )
    # (r, in) and (out, r) although GPT-2 is Conv1D
    assert A.shape[1] == 32 and B.shape == (
        96,
        A.shape[0],
    )
    if targets == "attn.q,attn.v":  # stacked A; B in the q and v row blocks, the k block zero
        assert A.shape[0] == 8 and B[32:64].abs().max() == 0 and B[:32, 4:].abs().max() == 0
    if targets == ALL:
        assert cfg["r"] == 3 and cfg["rank_pattern"] == {"h.0.attn.c_attn": 9, "h.1.attn.c_attn": 9}
        assert sorted(cfg["target_modules"]) == [
            "attn.c_attn",
            "attn.c_proj",
            "mlp.c_fc",
            "mlp.c_proj",
        ]


def test_cat_exports_to_peft(base_dir, tmp_path):
    skills = []
    for i in range(2):
        skill = adapted(base_dir, "lora", "attn.q,attn.v", seed=10 + i, r=2 + i, alpha=4.0)
        skills.append(save(skill, tmp_path / f"skill{i}.pt", base_dir))
    model = GPT.from_pretrained(base_dir).eval()
    adapters.add_adapters(model, "cat", *adapters.load_cat_skills(skills, model))
    with torch.no_grad():
        for m in adapters.adapted_modules(model).values():
            m.cat_w.copy_(torch.tensor([0.7, -1.3]))
    unmerged, merged, _ = peft_round_trip(model, base_dir, tmp_path)
    print(f"cat: max |Δlogit| PEFT {unmerged:.2e}, PEFT merged {merged:.2e}")
    assert unmerged < TOL and merged < TOL


def test_merged_model_loads_in_transformers(base_dir, tmp_path):
    model = adapted(base_dir, "lora", ALL, r=3, alpha=6.0)
    ckpt = save(model, tmp_path / "ckpt.pt", base_dir)
    ours = logits(model)
    interop.main(["export-hf", ckpt, str(tmp_path / "merged")])
    diff = (logits(hf_model(str(tmp_path / "merged"))) - ours).abs().max().item()
    print(f"export-hf (LoRA merged): max |Δlogit| {diff:.2e}")
    assert diff < TOL
    cfg = json.load(open(tmp_path / "merged" / "config.json"))
    assert (
        cfg["model_type"] == "gpt2"
        and cfg["activation_function"] == "gelu_new"
        and cfg["n_ctx"] == 32
    )
    sd = read_safetensors(str(tmp_path / "merged" / "model.safetensors"))
    # Conv1D (in, out), q|k|v fused
    assert sd["transformer.h.1.attn.c_attn.weight"].shape == (
        32,
        96,
    )
    assert sd["transformer.h.1.mlp.c_fc.weight"].shape == (32, 128)
    with pytest.raises(SystemExit, match="already exists"):  # never overwrites
        interop.main(["export-hf", ckpt, str(tmp_path / "merged")])


def test_trained_base_exports_and_bias_false_is_refused(tmp_path):
    torch.manual_seed(1)
    for bias in (True, False):
        model = GPT(
            GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=101, bias=bias)
        ).eval()
        path = str(tmp_path / f"base_{bias}.pt")
        write_checkpoint(
            {"model_args": vars(model.config).copy(), "model": model.state_dict()}, path
        )
        out = str(tmp_path / f"hf_{bias}")
        if not bias:
            with pytest.raises(SystemExit) as e:
                interop.main(["export-hf", path, out])
            assert (
                "bias=False" in str(e.value)
                and "\n" not in str(e.value)
                and not os.path.exists(out)
            )
            continue
        interop.main(["export-hf", path, out])
        diff = (logits(hf_model(out)) - logits(model)).abs().max().item()
        assert diff < TOL, diff


def peft_trained(base_dir, tmp_path, seed=0, **config):
    """A LoRA that PEFT itself initialised and trained (a few SGD steps, so B != 0), saved by PEFT."""
    torch.manual_seed(seed)
    pm = get_peft_model(
        hf_model(base_dir), LoraConfig(fan_in_fan_out=True, lora_dropout=0.0, **config)
    )
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.5)
    x = torch.randint(0, 101, (4, 16), generator=torch.Generator().manual_seed(seed))
    for _ in range(3):
        pm(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    pm.eval()
    path = str(tmp_path / "peft_trained")
    pm.save_pretrained(path)
    return path, logits(pm)


@pytest.mark.parametrize(
    "config",
    [
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"]),
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["c_attn", "c_fc"],
            use_rslora=True,
            layers_to_transform=[1],
        ),
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["c_attn", "mlp.c_proj"],
            rank_pattern={"h.1.attn.c_attn": 2},
            alpha_pattern={"mlp.c_proj": 3},
            use_rslora=True,
        ),
    ],
    ids=["uniform", "rslora-layer1", "patterns-rslora"],
)
def test_peft_trained_lora_imports_with_same_logits(base_dir, tmp_path, config):
    peft_dir, theirs = peft_trained(base_dir, tmp_path, **config)
    sd = read_safetensors(os.path.join(peft_dir, "adapter_model.safetensors"))
    assert all(v.abs().max() > 0 for k, v in sd.items() if "lora_B" in k)  # trained: B != 0
    out = str(tmp_path / "imported.pt")
    model = interop.import_peft(peft_dir, out, base=base_dir).eval()
    diff = (logits(model) - theirs).abs().max().item()
    print(f"import-peft {config}: max |Δlogit| {diff:.2e}")
    assert diff < TOL
    assert (theirs - logits(GPT.from_pretrained(base_dir).eval())).abs().max() > 1e-3
    # the checkpoint loads as any adapter checkpoint does (analyze.py, CAT), onto the base it names
    fresh = GPT.from_pretrained(base_dir).eval()
    ck = adapters.load_adapter_checkpoint(out, fresh)
    assert (logits(fresh) - theirs).abs().max().item() < TOL
    cfg = ck["config"]
    if config.get("rank_pattern"):  # scales folded into A, ranks padded to the largest with zeros
        assert cfg["r"] == 4 and cfg["alpha"] == 4.0
        assert ck["state"]["transformer.h.1.attn.q.lora_A"][2:].abs().max() == 0
        assert ck["state"]["transformer.h.0.attn.q.lora_A"][2:].abs().max() > 0
    else:
        assert (cfg["r"], cfg["alpha"], cfg["rslora"]) == (4, 8.0, bool(config.get("use_rslora")))
    if config.get("layers_to_transform"):
        assert cfg["targets"].split(",") == [
            "transformer.h.1.attn.q",
            "transformer.h.1.attn.k",
            "transformer.h.1.attn.v",
            "transformer.h.1.mlp.c_fc",
        ]
    cat = GPT.from_pretrained(base_dir)
    adapters.add_adapters(cat, "cat", *adapters.load_cat_skills([out, out], cat))
    assert adapters.adapter_config(cat)["ranks"] == [cfg["r"], cfg["r"]]


def test_export_import_round_trip_gives_back_the_adapter(base_dir, tmp_path):
    model = adapted(base_dir, "lora", "attn.q,attn.v,mlp.c_fc", r=4, alpha=8.0)
    ckpt = save(model, tmp_path / "ckpt.pt", base_dir)
    interop.main(["export-peft", ckpt, str(tmp_path / "peft")])
    # base from adapter_config.json
    interop.main(["import-peft", str(tmp_path / "peft"), str(tmp_path / "back.pt")])
    back = adapters.load_adapter_checkpoint(str(tmp_path / "back.pt"))
    assert back["config"]["r"] == 4 and back["config"]["targets"] == "attn.q,attn.v,mlp.c_fc"
    fresh = GPT.from_pretrained(base_dir).eval()
    adapters.load_adapter_checkpoint(str(tmp_path / "back.pt"), fresh)
    ours, theirs = adapters.adapted_modules(model), adapters.adapted_modules(fresh)
    assert all(
        torch.allclose(ours[n].delta_weight(), theirs[n].delta_weight(), atol=1e-6) for n in ours
    )


@pytest.mark.parametrize(
    "config,field",
    [
        (dict(r=2, target_modules=["c_attn"], use_dora=True), "use_dora"),
        (dict(r=2, target_modules=["wte"]), "wte"),
        (dict(r=2, target_modules=["c_attn"], bias="lora_only"), "bias"),
        (dict(r=2, target_modules=["c_attn"], modules_to_save=["ln_f"]), "modules_to_save"),
    ],
    ids=["dora", "embedding", "bias", "modules_to_save"],
)
def test_unmappable_peft_adapters_are_refused_with_one_line(base_dir, tmp_path, config, field):
    path = str(tmp_path / "peft")
    get_peft_model(hf_model(base_dir), LoraConfig(**config)).save_pretrained(path)
    with pytest.raises(SystemExit) as e:
        interop.main(["import-peft", path, str(tmp_path / "x.pt"), "--base", base_dir])
    msg = str(e.value)
    assert msg.startswith("formats.interop: ") and field in msg and "\n" not in msg
    assert not os.path.exists(tmp_path / "x.pt")


def test_export_peft_needs_a_hugging_face_base(tmp_path):
    base = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50))
    path = str(tmp_path / "base.pt")
    write_checkpoint({"model_args": vars(base.config).copy(), "model": base.state_dict()}, path)
    adapters.add_adapters(base, "lora", r=2)
    ckpt = str(tmp_path / "a.pt")
    interop.save_adapter(ckpt, base, {"path": path, "fingerprint": "0"})
    with pytest.raises(SystemExit) as e:
        interop.main(["export-peft", ckpt, str(tmp_path / "out")])
    assert "export-hf" in str(e.value) and "\n" not in str(e.value)


def test_safetensors_files_agree_with_the_safetensors_library(tmp_path):
    st = pytest.importorskip(
        "safetensors.torch", reason="needs the safetensors library (comes with transformers)"
    )
    t = {
        "w": torch.randn(3, 5),
        "h": torch.randn(7).half(),
        "b16": torch.randn(2, 3).bfloat16(),
        "flag": torch.tensor([True, False, True]),
        "i8": torch.arange(5, dtype=torch.int8),
        "n": torch.arange(3, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }
    ours, theirs = str(tmp_path / "ours.safetensors"), str(tmp_path / "theirs.safetensors")
    write_safetensors(ours, t)
    st.save_file(t, theirs)
    for path in (ours, theirs):
        for back in (read_safetensors(path), st.load_file(path)):
            assert set(back) == set(t) and all(
                torch.equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in t
            )
    mapped = read_safetensors(ours)
    mapped["w"] += 1  # copy-on-write: the file and a fresh read keep the old values
    assert torch.equal(read_safetensors(ours)["w"], t["w"]) and torch.equal(mapped["w"], t["w"] + 1)


def test_from_pretrained_holds_no_map_and_peaks_near_the_weights(tmp_path):
    """A model loaded from a memory map owns its weights (the file may be rewritten under it), and
    loading 64 MB of weights raises peak RSS by about that, not by the 3x of reading and copying."""
    import subprocess
    import sys

    path = str(tmp_path / "gpt2-mid")
    GPT2LMHeadModel(
        GPT2Config(n_layer=4, n_embd=512, n_head=8, vocab_size=512, n_positions=64)
    ).save_pretrained(path)
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=16, n_positions=8)
    ).save_pretrained(path + "-tiny")
    weights = os.path.getsize(os.path.join(path, "model.safetensors"))
    probe = (
        "import sys, torch; from model import GPT\n"
        "rss = lambda k: int([l for l in open('/proc/self/status') if l.startswith(k)][0].split()[1]) * 1024\n"
        f"GPT.from_pretrained({path + '-tiny'!r})  # first use of the meta device etc. loads code: not counted\n"
        f"before = rss('VmRSS'); m = GPT.from_pretrained({path!r}); print(rss('VmHWM') - before)\n"
        f"open({path!r} + '/model.safetensors', 'wb').close()  # truncated in place: a live map would SIGBUS\n"
        "print(float(m(torch.zeros(1, 4, dtype=torch.long))[0].abs().sum()))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-500:]
    peak = int(out.stdout.split()[0])
    print(f"from_pretrained: {weights / 2**20:.0f} MB of weights, peak RSS +{peak / 2**20:.0f} MB")
    assert peak < 1.5 * weights
