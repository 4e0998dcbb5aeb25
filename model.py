"""
A single-file GPT-2, in the spirit of karpathy/nanoGPT, with two changes for adapter work:

1. q, k and v are separate nn.Linear layers (GPT-2 fuses them in one `c_attn`). The LoRA and NOLA
   GPT-2 experiments adapt W_q and W_v only; with separate layers an adapter targets them by name
   (`attn.q`, `attn.v`) and never has to slice a fused weight. Loading a Hugging Face checkpoint
   splits `c_attn` into the three (see from_pretrained). The cost is three small matmuls instead
   of one, which is noise next to the MLP.
2. generate() keeps a KV cache (re-running the prefix for every new token is the slow part on a CPU),
   decodes prompts of different lengths in one left-padded batch, and does batched beam search.

References: GPT-2 (Radford et al. 2019); nanoGPT for the layout and the MFU estimate.
"""

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from formats.huggingface import convert_hf_gpt2, read_hf_gpt2


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64, to train from scratch
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
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x, cache=None, mask=None):
        B, T, C = x.size()  # batch, sequence length, embedding dim
        nh, hs = self.n_head, C // self.n_head  # q, k and v: (B, nh, T, hs)
        q, k, v = (f(x).view(B, T, nh, hs).transpose(1, 2) for f in (self.q, self.k, self.v))
        if cache is not None:  # decoding: keys and values so far, in buffers of generate's length
            if "k" not in cache:  # (growing them by torch.cat would copy them at every step)
                cache["k"], cache["v"] = (t.new_empty(B, nh, cache["size"], hs) for t in (k, v))
            n = cache["n"]
            cache["k"][:, :, n : n + T], cache["v"][:, :, n : n + T] = k, v
            k, v, cache["n"] = cache["k"][:, :, : n + T], cache["v"][:, :, : n + T], n + T
        if mask is None and k.size(2) > T > 1:  # T queries after P cached keys: query i sees 0..P+i
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - T)
        y = F.scaled_dot_product_attention(  # no mask: causal, or one query that sees every key
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )  # fmt: skip
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

    def forward(self, x, cache=None, mask=None):
        x = x + self.attn(self.ln_1(x), cache, mask)
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
        self.grad_checkpoint = False  # trade activation memory for recomputation (train.py sets it)
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

    def forward(self, idx, targets=None, caches=None, label_smoothing=0.0, valid=None, last=False):
        """idx (B, T) token ids -> (logits, loss). Without targets: logits (B, T, vocab_size) at every
        position (or, last=True, (B, 1, vocab_size) at the last) and loss None. With targets (B, T),
        -1 marking a position without a loss: logits (N, vocab_size) only at the N positions where
        targets != -1 (equal to model(idx)[0][targets != -1]) and loss their mean cross-entropy (nan
        if N = 0). valid (B, past + T) bool, False on left padding: each row's positions count from 0
        at its first real token, and no query sees a padded key. caches: generate's KV cache."""
        B, T = idx.size()
        past = caches[0]["n"] if caches else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {past + T} is longer than block_size={self.config.block_size}"
            )
        mask, pos = None, torch.arange(past, past + T, device=idx.device)  # (T,)
        if valid is not None:
            key, query = torch.arange(past + T, device=idx.device), pos[:, None]
            pos = (valid.long().cumsum(1) - 1).clamp(min=0)[:, past:]  # (B, T)
            # (B, 1, T, past + T); a padded query sees itself alone (no key at all: softmax NaN)
            mask = (key <= query) & valid[:, None, None, :] | (key == query)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            if self.grad_checkpoint and caches is None and torch.is_grad_enabled():
                # keep only the block's input; backward recomputes its inside (with the same dropout)
                x = checkpoint(block, x, None, mask, use_reentrant=False)
            else:
                x = block(x, None if caches is None else caches[i], mask)
        x = self.transformer.ln_f(x)
        if targets is None:  # the vocabulary-wide head is the largest matmul: skip unread positions
            return self.lm_head(x[:, -1:] if last else x), None  # (B, T or 1, vocab_size)
        # Prompt tokens and padding (target -1) carry no loss, yet the vocab-wide head and the fp32
        # cross-entropy would cost as much there as at the answer: run both only where a target counts
        keep = targets.view(-1) != -1
        logits = self.lm_head(x.view(-1, x.size(-1))[keep])  # (N, vocab_size)
        loss = F.cross_entropy(
            logits.float(), targets.view(-1)[keep], label_smoothing=label_smoothing
        )
        return logits, loss

    @torch.no_grad()
    def generate(
        self, idx, max_new_tokens, temperature=1.0, top_k=None, stop_token=None, num_beams=1,
        length_penalty=1.0, no_repeat_ngram_size=0, top_p=None, attention_mask=None, n_best=1,
        compile=False,
    ):  # fmt: skip
        """Continue idx (B, T) by at most max_new_tokens tokens -> (B, T + n). temperature=0: greedy;
        else sampling, cut to the top_k tokens and/or the fewest holding probability top_p. num_beams
        > 1: each row's best beam (_beam_search; no sampling), or with n_best=n its n best finished
        hypotheses, best first: rows b*n .. b*n+n-1 of (B*n, T + n). A row that emits stop_token keeps
        emitting it; all done, decoding stops. no_repeat_ngram_size=n: no generated n-gram twice.
        Prompts of different lengths are left-padded: attention_mask (B, T) 0 on padding, else 1.
        compile=True: the one-token steps compiled (_decode_step, ~a minute at first; prompt eager)."""
        if idx.size(1) + max_new_tokens > self.config.block_size:
            msg = f"prompt {idx.size(1)} + {max_new_tokens} new tokens exceeds block_size="
            raise ValueError(msg + str(self.config.block_size))
        self._decoding_layout()
        valid = None if attention_mask is None or attention_mask.all() else attention_mask.bool()
        caches = [{"size": idx.size(1) + max_new_tokens, "n": 0} for _ in self.transformer.h]
        logits = self(idx, caches=caches, valid=valid, last=True)[0][:, -1]  # prefill: (B, vocab)
        forward = self._decode_step() if compile else self  # one new token per row
        args = (logits, caches, valid, max_new_tokens, stop_token, no_repeat_ngram_size)
        if num_beams > 1:
            out = self._beam_search(forward, *args, num_beams, length_penalty, n_best)
            return torch.cat((idx.repeat_interleave(n_best, dim=0), out), dim=1)
        if n_best != 1:
            raise ValueError(f"n_best={n_best} needs beam search (num_beams > 1)")
        out, done = idx[:, :0], torch.zeros_like(idx[:, 0], dtype=torch.bool)  # (B, steps), (B,)
        for _ in range(max_new_tokens):
            ban_repeated_ngrams(logits, out, no_repeat_ngram_size)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:  # the top_k logits (and their ties) stay
                    kth = logits.topk(min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
                    logits[logits < kth] = -math.inf
                if top_p is not None:  # drop the tail outside the first top_p of probability
                    sorted_logits, order = logits.sort(dim=-1, descending=True)
                    p = F.softmax(sorted_logits.float(), dim=-1)
                    cut = sorted_logits.masked_fill(p.cumsum(-1) - p > top_p, -float("inf"))
                    logits = logits.scatter(1, order, cut)
                nxt = torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)
            if stop_token is not None:
                nxt[done] = stop_token
                done |= nxt.squeeze(1) == stop_token
            out = torch.cat((out, nxt), dim=1)
            if out.size(1) == max_new_tokens or stop_token is not None and bool(done.all()):
                break
            valid = None if valid is None else F.pad(valid, (0, 1), value=True)
            logits = forward(nxt, caches=caches, valid=valid)[0][:, -1]  # the new token alone
        return torch.cat((idx, out), dim=1)

    def _decoding_layout(self):
        """Decoding reads every weight once per new token. On a CPU, MKL's one-row x @ W.T runs ~1.2x
        (blocks) to 1.6x (head) faster when W is stored (in, out)-contiguous, as transformers' Conv1D
        keeps it, than in nn.Linear's (out, in) rows (docs/bench.md). So store each Linear weight that
        way, in place, once: same values and shapes, only the strides change (the tied embedding
        follows). One-row logits may differ in the last bits (another summation order); batched ones
        are bit-identical."""
        if self.lm_head.weight.device.type != "cpu":
            return
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.weight.is_contiguous():
                m.weight.data = m.weight.data.t().contiguous().t()

    def _decode_step(self):
        """GPT.forward compiled for the one-token steps (dynamic=True: any batch and cache length).
        A step reads every weight; inductor's GEMMs read a packed copy ~1.5x faster than MKL, but
        only of weights frozen as constants (freezing, read when dynamo traces: hence the patch).
        A frozen copy misses in-place changes (optimizer step, merge; .data writes stay unseen):
        when a tensor's storage or version moved, all compiled graphs go (docs/bench.md)."""
        key = [(t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers())]
        if getattr(self, "_compiled_for", key) != key:
            torch.compiler.reset()
        self._compiled_for = key
        quiet = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
        opts = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", **quiet}
        compiled = torch.compile(self, dynamic=True, options=opts)
        return torch._inductor.config.patch(freezing=True)(compiled)  # each call under the patch

    def _beam_search(
        self, forward, logits, caches, valid, max_new, stop, ngram, K, length_penalty, n_best=1
    ):
        """K beams per row after the prefill (logits (B, vocab)), as microsoft/LoRA's gpt2_beam.py
        decodes E2E; all rows' beams share one forward (model or compiled step) per step. A beam
        that emits stop is a finished hypothesis, scored sum(log p) / len**length_penalty (len
        counts its tokens, stop included), and leaves (score -inf; the next top-K refills); after
        max_new steps the live beams are hypotheses too. As log p <= 0, a live beam can end at best
        at score / max(len**lp) over the lengths to come: once none beats its row's best, the rest
        cannot change the result.
        n_best=n keeps each row's n best hypotheses (B*n rows, best first; a row that found fewer
        is padded with stop-only rows) and searches until no live beam beats the n-th."""
        (B, V), dev = logits.shape, logits.device
        first = torch.arange(B, device=dev)[:, None] * K  # (B, 1): each row's beam 0 in (B*K)
        # all beams start equal: step 0 takes its K candidates from beam 0 alone
        scores = torch.tensor([0.0] + [-math.inf] * (K - 1), device=dev).repeat(B, 1)  # (B, K)
        logits = logits.repeat_interleave(K, dim=0)  # (B*K, vocab)
        valid = None if valid is None else valid.repeat_interleave(K, dim=0)
        hist = torch.zeros(B * K, 0, dtype=torch.long, device=dev)  # (B*K, step) generated tokens
        pad = 0 if stop is None else stop
        best = torch.full((B, n_best), -math.inf, device=dev)  # each row's n best, best first
        best_len = hist.new_zeros(B, n_best)
        best_seq = torch.full((B, n_best, max_new), pad, device=dev)
        for step in range(max_new):
            ban_repeated_ngrams(logits, hist, ngram)
            logp = F.log_softmax(logits.float(), dim=-1).nan_to_num(-math.inf)  # all banned: NaN
            scores, flat = (scores.view(-1, 1) + logp).view(B, K * V).topk(K, dim=1)  # (B, K)
            src, tok = (first + flat // V).view(-1), (flat % V).view(-1, 1)  # beam each extends
            hist = torch.cat((hist[src], tok), dim=1)
            for c in caches:  # the cache follows its beam (step 0: the prefill's B rows)
                c["k"], c["v"] = (c[n].index_select(0, src if step else src // K) for n in "kv")
            ended = tok.view(B, K) == (-1 if stop is None else stop)  # (B, K); no token is -1
            final = scores if step == max_new - 1 else scores.masked_fill(~ended, -math.inf)
            # this step's hypotheses join the n best; a stable sort: ties, the earlier one first
            merged = torch.cat((best, final / (step + 1) ** length_penalty), dim=1)  # (B, n + K)
            best, keep = merged.sort(dim=1, descending=True, stable=True)
            best, keep = best[:, :n_best], keep[:, :n_best]
            new_seq = F.pad(hist.view(B, K, -1), (0, max_new - step - 1), value=pad)
            every = torch.cat((best_seq, new_seq), 1)  # (B, n + K, max_new)
            best_seq = every.gather(1, keep[..., None].expand(-1, -1, max_new))
            best_len = torch.cat((best_len, best_len.new_full((B, K), step + 1)), 1).gather(1, keep)
            scores = scores.masked_fill(ended, -math.inf)
            lengths = max((step + 2) ** length_penalty, max_new**length_penalty)
            if step == max_new - 1 or bool((scores.max(1).values / lengths <= best[:, -1]).all()):
                break  # no live beam can enter the n best
            valid = None if valid is None else F.pad(valid, (0, 1), value=True)
            logits = forward(tok, caches=caches, valid=valid)[0][:, -1]
        return best_seq.view(B * n_best, max_new)[:, : int(best_len.max())]

    def flops_per_token(self, frozen_weights=False):
        """Training FLOPs per token (PaLM paper, appendix B): 6N for the weights (forward 2N, backward 2N
        for the input gradients and 2N for the weight gradients) plus attention's 12·L·H·Q·T. With
        frozen_weights (only adapters train) no weight gradient is computed: 4N (the adapters' own
        FLOPs are a rounding error). Times tokens/s: the achieved FLOP/s; over the peak: the MFU."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return (4 if frozen_weights else 6) * self.num_params() + 12 * L * H * Q * T

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
        with torch.device("meta"):  # shapes only: no random init that the weights would overwrite
            model = cls(config)
        # each weight is copied once from the file into its own fp32 tensor, and its mapping dropped
        model.load_state_dict(convert_hf_gpt2(sd_hf, config.n_layer, consume=True), assign=True)
        model.transformer.wte.weight = model.lm_head.weight  # assign=True replaced both: tie again
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise RuntimeError("from_pretrained left a tensor on the meta device: give it a value")
        return model


def ban_repeated_ngrams(logits, hist, n):
    """Set to -inf, in place, the logit of each token that would complete an n-gram already in hist
    (R, L), each row's generated tokens (the prompt is not searched, as in the reference)."""
    if 0 < n <= hist.size(1):
        grams = hist.unfold(1, n, 1)  # (R, L - n + 1, n): every n-gram so far
        last = hist[:, hist.size(1) - n + 1 :].unsqueeze(1)  # (R, 1, n - 1): the next one's start
        rows, at = (grams[:, :, :-1] == last).all(-1).nonzero(as_tuple=True)
        logits[rows, grams[rows, at, -1]] = -math.inf
