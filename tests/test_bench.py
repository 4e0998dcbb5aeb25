"""bench.py --generate's floor: the matmuls it times alone are those decoding must run."""

import pytest
import torch

import bench
from model import GPT, GPTConfig


@pytest.mark.parametrize("layout", ["out,in", "in,out"])
def test_matmul_floor_runs_every_linear_on_the_rows_decoding_needs(layout, monkeypatch):
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=16, vocab_size=61))
    calls, linear = [], torch.nn.functional.linear

    def record(x, w, b=None):
        calls.append((x.size(0), tuple(w.shape), w.t().is_contiguous()))
        return linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", record)
    bench.matmul_floor(model, layout, tokens=7, prompts=2, rows=6, n=4)()
    in_out = layout == "in,out"
    block = [((16, 16), 4), ((64, 16), 1), ((16, 64), 1)]  # q, k, v, c_proj; c_fc; mlp.c_proj
    per_block = [w for w, k in block for _ in range(k)]
    # prefill: 7 real prompt tokens through both blocks, the head at 2 prompts' last positions
    prefill = [(7, w, in_out) for w in per_block * 2] + [(2, (61, 16), in_out)]
    step = [(6, w, in_out) for w in per_block * 2] + [(6, (61, 16), in_out)]
    assert calls == prefill + step * 3
