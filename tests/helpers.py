"""Helpers shared by several test files (import them as `from helpers import ...`)."""

import torch


def hf_state_dict(n_layer=2, n_embd=16, vocab=61, n_pos=32, seed=0):
    """Random weights with Hugging Face GPT-2's names and Conv1D (in, out) shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1
    C = n_embd
    sd = {
        "wte.weight": r(vocab, C),
        "wpe.weight": r(n_pos, C),
        "ln_f.weight": 1 + r(C),
        "ln_f.bias": r(C),
    }
    for i in range(n_layer):
        p = f"h.{i}."
        sd.update(
            {
                p + "ln_1.weight": 1 + r(C),
                p + "ln_1.bias": r(C),
                p + "ln_2.weight": 1 + r(C),
                p + "ln_2.bias": r(C),
                p + "attn.c_attn.weight": r(C, 3 * C),
                p + "attn.c_attn.bias": r(3 * C),
                p + "attn.c_proj.weight": r(C, C),
                p + "attn.c_proj.bias": r(C),
                p + "mlp.c_fc.weight": r(C, 4 * C),
                p + "mlp.c_fc.bias": r(4 * C),
                p + "mlp.c_proj.weight": r(4 * C, C),
                p + "mlp.c_proj.bias": r(C),
            }
        )
    return sd


# a 2-layer, 32-wide GPT on 4 x 32-token batches, in fp32: train.py's options for a run of seconds
TINY_MODEL = (
    '--n_layer=2 --n_head=2 --n_embd=32 --block_size=32 --batch_size=4 --eval_iters=2'.split()
)
TINY_MODEL.append('--dtype=float32')
