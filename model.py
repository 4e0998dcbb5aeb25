"""
A single-file GPT-2, in the spirit of karpathy/nanoGPT, with two changes for adapter work:

1. q, k and v are separate nn.Linear layers (GPT-2 fuses them in one `c_attn`). The LoRA and NOLA
   GPT-2 experiments adapt W_q and W_v only; with separate layers an adapter targets them by name
   (`attn.q`, `attn.v`) and never has to slice a fused weight. Loading a Hugging Face checkpoint
   splits `c_attn` into the three (see from_pretrained). The cost is three small matmuls instead
   of one, which is noise next to the MLP.
2. A KV cache in generate(): exact-match evaluation decodes many short answers, and re-running the
   whole prefix for every new token is the slow part on a CPU.

References: GPT-2 (Radford et al. 2019); nanoGPT for the layout and the MFU estimate.
"""

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from formats.huggingface import convert_hf_gpt2, read_hf_gpt2


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = (
        50304  # GPT-2's 50257, padded up to a multiple of 64 when training from scratch
    )
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} must be divisible by n_head={config.n_head}")
        self.q = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.k = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.v = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, cache=None):
        B, T, C = x.size()  # batch, sequence length, embedding dim
        nh, hs = self.n_head, C // self.n_head
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, nh, hs).transpose(1, 2)
        v = self.v(x).view(B, T, nh, hs).transpose(1, 2)
        if cache is not None:
            # decoding: attend to everything cached so far; new queries sit after it
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if k.size(2) == T:  # no past: the usual causal mask
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:  # T new queries after P cached keys: query i sees keys 0 .. P+i
            P = k.size(2) - T
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's gelu


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        for f in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(config, f) <= 0:
                raise ValueError(f"GPTConfig.{f} must be positive, got {getattr(config, f)}")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf 2017), as GPT-2. An adapter on lm_head would therefore also
        # change the input embedding: adapters.py refuses to target it.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count; position embeddings are left out by default, as in nanoGPT (the token
        embedding is shared with lm_head, so it counts once as a weight of the head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, caches=None, label_smoothing=0.0):
        """idx (B, T) token ids -> (logits, loss).
        Without targets: logits (B, T, vocab_size) at every position (what generation and evaluation
        read) and loss None. With targets (B, T), -1 marking a position without a loss: logits
        (N, vocab_size) only at the N positions where targets != -1 (equal to model(idx)[0][targets != -1])
        and loss the mean cross-entropy over those N (nan if N = 0). Callers wanting every position's
        logits call model(idx) and compute their loss from them."""
        B, T = idx.size()
        past = 0 if not caches or caches[0].get("k") is None else caches[0]["k"].size(2)
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {past + T} is longer than block_size={self.config.block_size}"
            )
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(
            self.transformer.wte(idx) + self.transformer.wpe(pos)
        )  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if caches is None else caches[i])
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x), None  # (B, T, vocab_size)
        # Prompt tokens and padding (target -1) carry no loss, yet the vocab-wide head and the fp32
        # cross-entropy would cost as much there as at the answer: run both only where a target counts
        keep = targets.view(-1) != -1
        logits = self.lm_head(x.view(-1, x.size(-1))[keep])  # (N, vocab_size)
        loss = F.cross_entropy(
            logits.float(), targets.view(-1)[keep], label_smoothing=label_smoothing
        )
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, stop_token=None):
        """Continue idx (B, T) by max_new_tokens tokens. temperature=0 decodes greedily. Rows must be
        of equal length (no padding). Stops early once every row has emitted stop_token; a finished
        row then keeps emitting stop_token."""
        if idx.size(1) + max_new_tokens > self.config.block_size:
            raise ValueError(
                f"prompt {idx.size(1)} + {max_new_tokens} new tokens exceeds block_size={self.config.block_size}"
            )
        caches = [{} for _ in self.transformer.h]
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        logits, _ = self(idx, caches=caches)  # prefill the cache with the whole prompt
        for _ in range(max_new_tokens):
            logits = logits[:, -1, :]  # (B, vocab_size)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)
            if stop_token is not None:
                nxt[done] = stop_token
                done |= nxt.squeeze(1) == stop_token
            idx = torch.cat((idx, nxt), dim=1)
            if stop_token is not None and bool(done.all()):
                break
            logits, _ = self(nxt, caches=caches)  # only the new token goes through the model
        return idx

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops, frozen_weights=False):
        """Model FLOPs utilisation: achieved FLOP/s over peak_flops (PaLM paper, appendix B).
        Per token 6N FLOPs for the weights (forward 2N, backward 2N for the input gradients and 2N for the
        weight gradients) plus attention's 12·L·H·Q·T. With frozen_weights (only adapters train) the weight
        gradients are never computed: 4N (the adapters' own FLOPs are a rounding error)."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = (4 if frozen_weights else 6) * self.num_params() + 12 * L * H * Q * T
        return flops_per_token * tokens_per_iter / dt / peak_flops

    def fingerprint(self):
        """A content hash of the weights (sha256, first 16 hex digits). Adapter checkpoints record it
        so that they are refused against any other base."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """GPT-2 weights in Hugging Face layout, from a local directory or by model name (downloaded
        once into a cache folder): formats/huggingface.py reads and converts them."""
        args, sd_hf = read_hf_gpt2(name_or_dir)
        config = GPTConfig(**args, dropout=dropout, bias=True)
        with torch.device(
            "meta"
        ):  # shapes only: no random init that the file's weights would overwrite
            model = cls(config)
        # each weight is copied once from the file into its own fp32 tensor, and its mapping dropped
        model.load_state_dict(convert_hf_gpt2(sd_hf, config.n_layer, consume=True), assign=True)
        model.transformer.wte.weight = (
            model.lm_head.weight
        )  # assign=True replaced both: tie them again
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise RuntimeError(
                "from_pretrained left a tensor on the meta device: give it a value here"
            )
        return model
