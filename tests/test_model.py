"""model.py: causality, GPT-2 (Hugging Face layout) loading checked against an independent reference
forward, the safetensors reader on hostile input, the KV cache, and overfitting a tiny batch."""

import json
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import hf_state_dict

from adapters import linear_names
from formats.checkpoint import load_model
from formats.huggingface import convert_hf_gpt2, hf_download
from formats.safetensors import read_safetensors, write_safetensors
from model import GPT, GPTConfig

TINY = dict(block_size=32, vocab_size=61, n_layer=2, n_head=2, n_embd=16)


def reference_gpt2(sd, idx, n_layer, n_head):
    """GPT-2's forward written directly from the HF tensors (Conv1D: y = x @ W + b), with explicit
    masked softmax attention: independent of model.py's code path."""
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)
    conv = lambda x, p: x @ sd[p + ".weight"] + sd[p + ".bias"]
    B, T = idx.shape
    x = sd["wte.weight"][idx] + sd["wpe.weight"][:T]
    C = x.shape[-1]
    hs = C // n_head
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(n_layer):
        p = f"h.{i}."
        q, k, v = conv(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        q, k, v = (t.view(B, T, n_head, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + conv(y, p + "attn.c_proj")
        h = conv(ln(x, p + "ln_2"), p + "mlp.c_fc")
        # GPT-2's gelu
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        x = x + conv(h, p + "mlp.c_proj")
    return ln(x, "ln_f") @ sd["wte.weight"].t()


def write_hf_dir(path, sd, fmt="safetensors"):
    os.makedirs(path, exist_ok=True)
    cfg = {"n_positions": 32, "vocab_size": 61, "n_layer": 2, "n_head": 2, "n_embd": 16}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    # HF files prefix names with 'transformer.'
    full = {"transformer." + k: v for k, v in sd.items()}
    if fmt == "safetensors":
        write_safetensors(os.path.join(path, "model.safetensors"), full)
    else:
        torch.save(full, os.path.join(path, "pytorch_model.bin"))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_gpt2_logits_match_reference(tmp_path, fmt):
    sd = hf_state_dict()
    write_hf_dir(tmp_path / "gpt2-tiny", sd, fmt)
    model = GPT.from_pretrained(str(tmp_path / "gpt2-tiny")).eval()
    idx = torch.randint(0, 61, (3, 20), generator=torch.Generator().manual_seed(1))
    logits, _ = model(idx)
    ref = reference_gpt2(sd, idx, n_layer=2, n_head=2)
    assert logits.shape == (3, 20, 61)
    assert torch.allclose(logits, ref, atol=1e-4, rtol=0), (logits - ref).abs().max()
    # q, k, v are the three column blocks of c_attn, transposed into nn.Linear's (out, in) layout
    assert torch.equal(
        model.transformer.h[1].attn.v.weight, sd["h.1.attn.c_attn.weight"][:, 32:].t()
    )
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_causality():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    a = torch.randint(0, 61, (2, 24))
    b = a.clone()
    b[:, 12:] = torch.randint(0, 61, (2, 12))  # change only the future
    la, lb = model(a)[0], model(b)[0]
    assert torch.allclose(la[:, :12], lb[:, :12], atol=1e-6)
    assert not torch.allclose(la[:, 12:], lb[:, 12:], atol=1e-3)


def test_kv_cache_generate_equals_full_recompute():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = torch.randint(0, 61, (3, 7))
    out = model.generate(idx, 10, temperature=0)
    ref = idx
    for _ in range(10):
        ref = torch.cat([ref, model(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)


def test_generate_stops_and_pads_with_stop_token():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = torch.randint(0, 61, (4, 5))
    first = model.generate(idx, 1, temperature=0)[:, -1]
    stop = int(first[0])
    out = model.generate(idx, 12, temperature=0, stop_token=stop)
    # row 0 stopped at once and stays stopped
    assert out[0, 5] == stop and (out[0, 5:] == stop).all()
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.generate(idx, 40)


def test_tiny_model_overfits_tiny_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    x = torch.randint(0, 61, (4, 16))
    y = torch.roll(x, -1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        _, loss = model(x, y)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5 and loss.item() < first / 20  # from ~ln(61) = 4.1 to memorised


def test_ignore_index_masks_positions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    x = torch.randint(0, 61, (2, 10))
    y = torch.randint(0, 61, (2, 10))
    y_masked = y.clone()
    y_masked[:, :6] = -1
    _, loss = model(x, y_masked)
    ref = F.cross_entropy(model(x)[0][:, 6:].reshape(-1, 61), y[:, 6:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)


def test_safetensors_roundtrip_and_corruption(tmp_path):
    t = {
        "a": torch.randn(3, 4),
        "b": torch.arange(5, dtype=torch.int64),
        "c": torch.randn(2).to(torch.bfloat16),
    }
    p = tmp_path / "x.safetensors"
    write_safetensors(p, t)
    back = read_safetensors(p)
    assert all(torch.equal(t[k], back[k]) for k in t)
    raw = p.read_bytes()
    (tmp_path / "short").write_bytes(raw[:4])
    (tmp_path / "huge").write_bytes((10**12).to_bytes(8, "little") + raw[8:])
    (tmp_path / "trunc").write_bytes(raw[:-8])
    for name, msg in [
        ("short", "not a safetensors"),
        ("huge", "header length"),
        ("trunc", "corrupt safetensors entry"),
    ]:
        with pytest.raises(ValueError, match=msg):
            read_safetensors(tmp_path / name)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pwned_by_checkpoint",))


def test_pickle_with_code_is_refused(tmp_path):
    p = tmp_path / "ckpt.pt"
    with open(p, "wb") as f:
        pickle.dump({"model_args": {}, "model": _Evil()}, f)
    if os.path.exists("/tmp/pwned_by_checkpoint"):
        os.remove("/tmp/pwned_by_checkpoint")
    with pytest.raises(ValueError, match="only plain tensors are accepted"):
        load_model(str(p))
    assert not os.path.exists("/tmp/pwned_by_checkpoint")


def test_bad_paths_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown model 'gpt3'"):
        hf_download("gpt3")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a full-model checkpoint"):
        load_model(str(tmp_path / "other.pt"))
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(
        json.dumps({"n_positions": 8, "vocab_size": 5, "n_layer": 1, "n_head": 1, "n_embd": 4})
    )
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        GPT.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPT(GPTConfig(n_embd=10, n_head=3, n_layer=1, vocab_size=5, block_size=8))


def test_offline_download_fails_with_one_line(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    with pytest.raises(
        RuntimeError, match=r"put config.json and model.safetensors .* into .*gpt2/"
    ) as e:
        hf_download("gpt2", cache_dir=str(tmp_path))
    assert "\n" not in str(e.value)


def full_logit_loss(model, x, y, label_smoothing=0.0):
    """The loss as the head used to compute it: logits at every position, then -1 targets ignored."""
    logits = model(x)[0]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        y.reshape(-1),
        ignore_index=-1,
        label_smoothing=label_smoothing,
    )


def answer_batch(prompt_share, seed=0, B=4, T=24):
    """Targets with -1 on the first ~prompt_share of each row (a different prompt length per row)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, 61, (B, T), generator=g), torch.randint(0, 61, (B, T), generator=g)
    if prompt_share:
        for b in range(B):
            y[b, : int(prompt_share * T) + b - B // 2] = -1
    return x, y


@pytest.mark.parametrize("prompt_share,label_smoothing", [(0.7, 0.0), (0.0, 0.0), (0.7, 0.1)])
def test_answer_only_head_gives_the_full_logit_loss_and_gradients(prompt_share, label_smoothing):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    x, y = answer_batch(prompt_share)
    assert (y == -1).float().mean() > 0.6 if prompt_share else (y != -1).all()
    _, loss = model(x, y, label_smoothing=label_smoothing)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = full_logit_loss(model, x, y, label_smoothing)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-6 * ref.item(), (loss.item(), ref.item())
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-7), (
            n,
            (grads[n] - p.grad).abs().max(),
        )


def test_logits_with_targets_are_those_of_the_counted_positions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    x, y = answer_batch(0.7)
    logits, _ = model(x, y)
    full = model(x)[0]
    assert logits.shape == (int((y != -1).sum()), 61) and full.shape == (4, 24, 61)
    assert torch.allclose(logits, full[y != -1], atol=1e-6)


def test_generation_and_evaluation_read_full_logits(tmp_path):
    """Greedy generation and data.evaluate's answer-token loss against an independent reference forward
    (reference_gpt2 on the same Hugging Face tensors), which always computes every position's logits."""
    import data

    enc = data.get_tokenizer("world-bytes")
    sd = hf_state_dict(vocab=enc.n_vocab, n_pos=64, seed=3)
    model = GPT(GPTConfig(block_size=64, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=16))
    model.load_state_dict(convert_hf_gpt2(sd, 2))
    model.eval()
    idx = torch.randint(0, enc.n_vocab, (3, 7), generator=torch.Generator().manual_seed(2))
    ref = idx
    for _ in range(8):
        ref = torch.cat([ref, reference_gpt2(sd, ref, 2, 2)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(idx, 8, temperature=0), ref)
    items = {"t": {"test": [("a b", "c"), ("dd e", "ff g"), ("h", "ijk"), ("lm no p", "q")]}}
    ds = data.InstructDataset(items, 64, enc, "world-bytes", ["t"])
    x, y = ds.collate(ds.data["t"]["test"])
    want = F.cross_entropy(
        reference_gpt2(sd, x, 2, 2).reshape(-1, enc.n_vocab), y.reshape(-1), ignore_index=-1
    )
    got = ds.evaluate(model, split="test")["t"]["loss"]
    assert got == pytest.approx(want.item(), rel=1e-5)


def test_linear_names_select_by_suffix_or_glob_and_refuse_each_unmatched_pattern():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    assert linear_names(model, " attn.v, attn.q") == [
        f"transformer.h.{i}.attn.{k}" for i in range(2) for k in "qv"
    ]
    assert linear_names(model, ["h.1.mlp.*"]) == [
        "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.c_proj",
    ]
    # q, k, v, c_proj, c_fc, mlp c_proj per layer; lm_head
    assert len(linear_names(model, "*")) == 2 * 6 + 1
    with pytest.raises(
        ValueError, match=r"^target 'attn.z' matches no nn.Linear in the model \(names look like "
    ):
        linear_names(model, "attn.q,attn.z")  # one bad pattern among good ones is still refused
    with pytest.raises(ValueError, match="targets are empty"):
        linear_names(model, " , ")
