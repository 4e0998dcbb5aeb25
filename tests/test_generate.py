"""GPT.generate: greedy, sampling, left-padded batches and batched beam search (the decoding of
microsoft/LoRA's E2E experiments), checked against exhaustive search, rows decoded alone and
Hugging Face transformers' generate."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, ban_repeated_ngrams


def tiny(vocab=61, seed=0, scale=0.0, **kw):
    """A small random GPT; scale > 0 adds noise to every weight, so that its next-token
    distributions are far from uniform (no near-ties in the searches below)."""
    torch.manual_seed(seed)
    model = GPT(
        GPTConfig(**{**dict(block_size=32, n_layer=2, n_head=2, n_embd=16), **kw}, vocab_size=vocab)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def left_pad(prompts, pad=0):
    """(B, T) ids and attention mask of prompts of different lengths, padding on the left."""
    T = max(map(len, prompts))
    x = torch.full((len(prompts), T), pad)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        x[i, T - len(p) :], mask[i, T - len(p) :] = torch.tensor(p), 1
    return x, mask


def beam_search(model, idx, max_new, K, stop=None, length_penalty=1.0, ngram=0):
    """The beam search itself, any K (generate sends num_beams=1 to greedy decoding)."""
    caches = [{"size": idx.size(1) + max_new, "n": 0} for _ in model.transformer.h]
    with torch.no_grad():
        logits = model(idx, caches=caches, last=True)[0][:, -1]
        return model._beam_search(
            model, logits, caches, None, max_new, stop, ngram, K, length_penalty
        )


def score(model, prompt, seq, length_penalty):
    """sum(log p) / len**length_penalty of seq after prompt, by one plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + seq]))[0][0, len(prompt) - 1 : -1]
    logp = F.log_softmax(logits.float(), dim=-1)[torch.arange(len(seq)), seq].sum().item()
    return logp / len(seq) ** length_penalty


def generated(row, prompt_len, stop):
    """The tokens a row generated, up to and including its first stop token."""
    out = row[prompt_len:].tolist()
    return out[: out.index(stop) + 1] if stop in out else out


def test_prefill_logits_at_the_last_position_only_equal_the_full_ones():
    model = tiny()
    idx = torch.randint(0, 61, (3, 9))
    full, last = model(idx)[0], model(idx, last=True)[0]
    assert full.shape == (3, 9, 61) and last.shape == (3, 1, 61)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


def test_generate_stores_the_weights_in_out_contiguous_and_changes_no_value():
    model = tiny(scale=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.tensor([[5, 9, 2, 8]])
    first = model.generate(x, 6, temperature=0)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:  # (out, in) shape, (in, out) in memory: x @ W.T reads it row by row
        assert m.weight.t().is_contiguous() and not m.weight.is_contiguous()
    assert model.transformer.wte.weight is model.lm_head.weight
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model.generate(x, 6, temperature=0), first)
    loss = model(x, x)[1]  # and it still trains
    loss.backward()
    assert all(m.weight.grad.shape == m.weight.shape for m in linears)


def test_padded_logits_equal_unpadded():
    """Each row's logits at its real tokens, in a left-padded batch and in the KV-cached steps that
    follow, equal that row run alone (positions count from its first real token)."""
    model = tiny(scale=0.1)
    prompts = [[5, 9, 2], [7, 1, 8, 3, 3, 4, 2], [11, 12, 13, 14, 15]]
    x, mask = left_pad(prompts, pad=60)
    nxt = torch.tensor([[4], [5], [6]])
    caches = [{"size": x.size(1) + 1, "n": 0} for _ in model.transformer.h]
    with torch.no_grad():
        padded = model(x, caches=caches, valid=mask.bool())[0]
        step = model(nxt, caches=caches, valid=F.pad(mask.bool(), (0, 1), value=True))[0]
        for i, p in enumerate(prompts):
            alone = model(torch.tensor([p + [nxt[i].item()]]))[0][0]
            assert (padded[i, -len(p) :] - alone[:-1]).abs().max() < 1e-5
            assert (step[i, 0] - alone[-1]).abs().max() < 1e-5
        # the pad tokens' values do not matter
        other = model(torch.where(mask.bool(), x, 3), valid=mask.bool())[0]
    assert (other - padded).masked_select(mask.bool()[..., None]).abs().max() < 1e-5


@pytest.mark.parametrize("num_beams", [1, 3])
def test_padded_batch_equals_rows_decoded_alone(num_beams):
    """Greedy and beam search, with a stop token and the n-gram ban: each row of a left-padded
    batch gets what it gets alone; a row that stopped is padded with the stop token."""
    model = tiny(scale=0.3)
    prompts = [[5, 9, 2], [7, 1, 8, 3, 3, 4, 2], [11, 12, 13, 14, 15], [40]]
    kw = dict(temperature=0, num_beams=num_beams, no_repeat_ngram_size=2, length_penalty=0.8)
    stop = generated(model.generate(torch.tensor([prompts[1]]), 3, **kw)[0], 7, None)[-1]
    x, mask = left_pad(prompts, pad=stop)
    out = model.generate(x, 12, stop_token=stop, attention_mask=mask, **kw)
    lengths = []
    for i, p in enumerate(prompts):
        alone = generated(
            model.generate(torch.tensor([p]), 12, stop_token=stop, **kw)[0], len(p), stop
        )
        lengths.append(len(alone))
        assert out[i, x.size(1) : x.size(1) + len(alone)].tolist() == alone
        assert (out[i, x.size(1) + len(alone) :] == stop).all()
    assert min(lengths) < 12 and out.size(1) == x.size(1) + max(lengths)  # one row stopped early


@pytest.mark.parametrize("num_beams", [1, 3])
def test_decoding_stops_once_every_row_has_stopped(num_beams):
    model = tiny(scale=0.3)
    idx = torch.tensor([[5, 9, 2], [5, 9, 2]])
    stop = model.generate(idx, 1, temperature=0)[0, -1].item()  # the likeliest first token
    out = model.generate(idx, 12, temperature=0, stop_token=stop, num_beams=num_beams)
    assert out[:, 3:].tolist() == [[stop], [stop]]


def test_one_beam_is_greedy():
    model = tiny(scale=0.3)
    idx = torch.randint(0, 61, (3, 6))
    for stop, ngram in ((None, 0), (7, 0), (None, 2)):
        greedy = model.generate(idx, 10, temperature=0, stop_token=stop, no_repeat_ngram_size=ngram)
        beam = beam_search(model, idx, 10, 1, stop=stop, ngram=ngram)
        assert torch.equal(beam, greedy[:, 6 : 6 + beam.size(1)])


@pytest.mark.parametrize("length_penalty", [0.8, 2.0, -0.5])
def test_beam_search_with_enough_beams_finds_the_exhaustive_best(length_penalty):
    """vocab 6, at most 3 new tokens: with 6**3 beams nothing is pruned, so beam search must return
    the best of all 156 sequences (stop only at the end) under sum(log p) / len**length_penalty."""
    V, n, stop = 6, 3, 0
    model = tiny(vocab=V, scale=0.5, seed=1)
    prompts = [[1, 2, 3], [4, 5, 1, 2, 3, 4]]
    for p in prompts:
        seqs = [
            list(s)
            for L in range(1, n + 1)
            for s in itertools.product(range(V), repeat=L)
            if stop not in s[:-1] and (L == n or s[-1] == stop)
        ]
        assert len(seqs) == 1 + 5 + 25 + 125  # ended at 1, 2 or 3 tokens, or not at all
        scores = [score(model, p, s, length_penalty) for s in seqs]
        best = seqs[max(range(len(seqs)), key=scores.__getitem__)]
        got = beam_search(
            model, torch.tensor([p]), n, V**n, stop=stop, length_penalty=length_penalty
        )
        assert generated(got[0], 0, stop) == best
        assert sorted(scores)[-1] - sorted(scores)[-2] > 1e-4  # a clear winner, not a tie
        out = model.generate(
            torch.tensor([p]), n, num_beams=V**n, stop_token=stop, length_penalty=length_penalty
        )
        assert generated(out[0], len(p), stop) == best


@pytest.mark.parametrize("length_penalty", [0.8, -0.5])
def test_n_best_with_enough_beams_are_the_exhaustive_n_best_in_order(length_penalty):
    """As above (vocab 5, at most 4 new tokens, 5**4 beams), with n_best=5: the five best of all
    341 sequences, best first (the search stops only once no live beam can enter them); n_best=1
    is the plain result, and a row with fewer hypotheses than n_best is padded with stop rows."""
    V, n, stop, lp = 5, 4, 0, length_penalty
    model = tiny(vocab=V, scale=0.5, seed=1)
    prompts = [[1, 2, 3], [4, 2, 1]]
    seqs = [
        list(s)
        for L in range(1, n + 1)
        for s in itertools.product(range(V), repeat=L)
        if stop not in s[:-1] and (L == n or s[-1] == stop)
    ]
    assert len(seqs) == 1 + 4 + 16 + 64 * 5
    x = torch.tensor(prompts)
    out = model.generate(x, n, num_beams=V**n, stop_token=stop, length_penalty=lp, n_best=5)
    assert out.shape[0] == 2 * 5
    for i, p in enumerate(prompts):
        ranked = sorted(seqs, key=lambda s: -score(model, p, s, lp))
        assert [generated(out[5 * i + r], len(p), stop) for r in range(5)] == ranked[:5]
    one = model.generate(x, n, num_beams=V**n, stop_token=stop, length_penalty=lp)
    assert torch.equal(one, out[::5, : one.size(1)])
    # 2 beams, 2 new tokens: at most 2 + 2 hypotheses per row, so the fifth is stop tokens only
    few = model.generate(x, 2, num_beams=2, stop_token=stop, n_best=5)[:, 3:]
    assert few[4].tolist() == [stop, stop] and few[9].tolist() == [stop, stop]
    assert all(len(set(map(tuple, few[5 * i : 5 * i + 2].tolist()))) == 2 for i in range(2))
    with pytest.raises(ValueError, match="n_best"):
        model.generate(x, 2, temperature=0, n_best=2)


def test_ban_repeated_ngrams_by_hand():
    logits = torch.zeros(3, 6)
    hist = torch.tensor([[1, 2, 3, 1, 2], [1, 2, 3, 1, 4], [5, 5, 5, 5, 5]])
    ban_repeated_ngrams(logits, hist, 3)
    assert (logits == -math.inf).nonzero().tolist() == [[0, 3], [2, 5]]  # (1, 2) -> 3; (5, 5) -> 5
    logits = torch.zeros(3, 6)
    ban_repeated_ngrams(logits, hist, 1)  # 1-grams: every token generated so far
    assert (logits[1] == -math.inf).nonzero().view(-1).tolist() == [1, 2, 3, 4]
    logits = torch.zeros(3, 6)
    ban_repeated_ngrams(logits, hist[:, :2], 3)  # no complete 3-gram yet
    assert (logits == 0).all()


@pytest.mark.parametrize("num_beams", [1, 4])
def test_no_repeat_ngram_size_bans_repeats_among_generated_tokens_only(num_beams):
    model = tiny(vocab=8, scale=0.5, seed=3)
    idx = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 1]])
    grams = lambda s, n: [tuple(s[i : i + n]) for i in range(len(s) - n + 1)]
    free = model.generate(idx, 20, temperature=0, num_beams=num_beams)[:, 4:].tolist()
    assert any(len(set(grams(s, 3))) < len(grams(s, 3)) for s in free)  # it does repeat unbanned
    out = model.generate(idx, 20, temperature=0, num_beams=num_beams, no_repeat_ngram_size=3)
    for s in out[:, 4:].tolist():
        assert len(set(grams(s, 3))) == len(grams(s, 3))
    # the prompt is not searched: a prompt of one repeated token does not ban that token
    one = model.generate(
        torch.tensor([[s[0]] * 4 for s in free]),
        1,
        temperature=0,
        num_beams=num_beams,
        no_repeat_ngram_size=1,
    )
    plain = model.generate(
        torch.tensor([[s[0]] * 4 for s in free]), 1, temperature=0, num_beams=num_beams
    )
    assert torch.equal(one, plain)


def reference_beam(model, prompt, max_new, K, stop, length_penalty, ngram):
    """gpt2_beam.py's decoding of one prompt, written plainly: every step runs until max_new (no
    early stop) and recomputes each beam's whole sequence (no cache, no batching)."""
    beams, scores = [[]], [0.0]  # step 0: beam 0 alone
    best, best_seq = -math.inf, None
    for step in range(max_new):
        cands = []
        for b, s in zip(beams, scores):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + b]))[0][0, -1]
            seen = {tuple(b[i : i + ngram]) for i in range(len(b) - ngram + 1)} if ngram else set()
            for t in range(logits.numel()):
                if ngram and len(b) >= ngram and tuple(b[len(b) - ngram + 1 :] + [t]) in seen:
                    logits[t] = -math.inf
            logp = F.log_softmax(logits.float(), dim=-1).tolist()
            cands += [(s + logp[t], b + [t]) for t in range(len(logp))]
        top = sorted(cands, key=lambda c: -c[0])[:K]
        beams, scores = [c[1] for c in top], [c[0] for c in top]
        for i, (s, b) in enumerate(top):
            if b[-1] == stop or step == max_new - 1:
                if s / len(b) ** length_penalty > best:
                    best, best_seq = s / len(b) ** length_penalty, b
                scores[i] = -math.inf
    return best_seq


@pytest.mark.parametrize("length_penalty", [0.8, 2.0])
def test_batched_beam_search_equals_the_plain_reference(length_penalty):
    """Batched rows, KV cache reordered by beam, the n-gram ban, stop tokens and the early stop give
    what the plain reference decoding gives; hypotheses end at the stop token, padded with it."""
    model = tiny(vocab=12, scale=0.5, seed=4)
    prompts = [[5, 9, 2, 8], [7, 1], [3, 3, 3, 4, 5], [10]]
    stop, n, K = 2, 14, 3
    x, mask = left_pad(prompts, pad=stop)
    out = model.generate(
        x,
        n,
        num_beams=K,
        stop_token=stop,
        length_penalty=length_penalty,
        no_repeat_ngram_size=2,
        attention_mask=mask,
    )
    rows = [generated(out[i], x.size(1), stop) for i in range(len(prompts))]
    for p, row in zip(prompts, rows):
        assert row == reference_beam(model, p, n, K, stop, length_penalty, 2)
    assert any(r[-1] == stop for r in rows) and out.size(1) == x.size(1) + max(map(len, rows))
    assert all((out[i, x.size(1) + len(r) :] == stop).all() for i, r in enumerate(rows))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_stops_early_with_the_result_of_every_step(length_penalty):
    """A likely stop token ends hypotheses at once; decoding stops before max_new_tokens once no live
    beam can win any more (with length_penalty > 0 a beam that runs on may still win, so that comes
    late), and the result is the reference's, which runs every step."""
    model = tiny(vocab=12, scale=0.5, seed=5)
    prompts = [[5, 9, 2, 8], [7, 1, 8, 3], [4, 4, 6, 10]]
    forwards = []
    model.lm_head.register_forward_hook(lambda *_: forwards.append(1))
    early = 0
    for p in prompts:
        stop = model.generate(torch.tensor([p]), 1, temperature=0)[0, -1].item()
        forwards.clear()
        out = model.generate(
            torch.tensor([p]), 25, num_beams=3, stop_token=stop, length_penalty=length_penalty
        )
        early += len(forwards) < 25  # the prefill and fewer than 24 steps
        row = generated(out[0], len(p), stop)
        assert row == reference_beam(model, p, 25, 3, stop, length_penalty, 0)
        assert out.size(1) == len(p) + len(row)
    assert early >= 1 or length_penalty > 0  # with length_penalty 0, live beams fall behind fast


def test_top_p_and_top_k_sampling():
    model = tiny(scale=0.3)
    idx = torch.randint(0, 61, (4, 5))
    greedy = model.generate(idx, 8, temperature=0)
    for kw in (dict(top_p=1e-6), dict(top_k=1), dict(top_p=0.5, top_k=1)):
        torch.manual_seed(0)
        assert torch.equal(model.generate(idx, 8, temperature=1.0, **kw), greedy)
    torch.manual_seed(0)
    assert not torch.equal(model.generate(idx, 8, temperature=1.0, top_p=0.99), greedy)
    # top_p keeps the smallest set of most likely tokens holding top_p of the probability
    torch.manual_seed(0)
    x = torch.tensor([[5], [6], [7]])
    samples = {
        t
        for _ in range(50)
        for t in model.generate(x, 1, temperature=1.0, top_p=0.3)[:, -1].tolist()
    }
    probs = F.softmax(model(x)[0][:, -1], dim=-1).detach()
    allowed = set()
    for row in probs:
        p, order = row.sort(descending=True)
        allowed |= set(order[: int((p.cumsum(0) < 0.3).sum()) + 1].tolist())
    assert samples <= allowed


def hf_pair(vocab=101, seed=0):
    """A small random GPT-2 in transformers and the same weights here (the HF test-only dep)."""
    transformers = pytest.importorskip(
        "transformers", reason="needs transformers (requirements-dev.txt)"
    )
    from formats.huggingface import convert_hf_gpt2

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=48)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # far from uniform: no near-ties
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    ours = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, block_size=48))
    ours.load_state_dict(convert_hf_gpt2(sd, 2))
    return hf, ours.eval()


def hf_generate(hf, x, mask, n, **kw):
    out = hf.generate(
        x,
        attention_mask=mask,
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        **kw,
    )
    return out[:, x.size(1) :]


def test_greedy_equals_transformers_token_for_token():
    hf, ours = hf_pair()
    prompts = [[5, 9, 2, 8, 1], [7, 1], [3, 3, 3, 4, 5, 6, 7, 8], [10]]
    x, mask = left_pad(prompts)
    want = hf_generate(hf, x, mask, 20)
    assert torch.equal(
        ours.generate(x, 20, temperature=0, attention_mask=mask)[:, x.size(1) :], want
    )
    for i, p in enumerate(prompts):  # and each row alone
        assert torch.equal(
            ours.generate(torch.tensor([p]), 20, temperature=0)[0, len(p) :], want[i]
        )


def test_beam_search_equals_transformers_without_a_stop_token():
    """transformers' beam search differs from the reference by design once hypotheses end: it
    keeps K live beams by taking the top 2K candidates and moving finished ones aside, where the
    reference lets a finished beam's slot go for one step; and its n-gram ban searches the prompt
    too. Without a stop token (every hypothesis max_new long) both are plain top-K beam search
    from beam 0 at step 0: the same tokens."""
    hf, ours = hf_pair(seed=1)
    prompts = [[5, 9, 2, 8, 1], [7, 1], [3, 3, 3, 4, 5, 6, 7, 8], [10]]
    x, mask = left_pad(prompts)
    for K, lp in ((4, 1.0), (10, 0.8)):
        want = hf_generate(hf, x, mask, 16, num_beams=K, length_penalty=lp)
        got = ours.generate(x, 16, num_beams=K, length_penalty=lp, attention_mask=mask)
        assert torch.equal(got[:, x.size(1) :], want)
        greedy = ours.generate(x, 16, temperature=0, attention_mask=mask)[:, x.size(1) :]
        assert not torch.equal(greedy, want)  # the search found what greedy misses


@pytest.mark.parametrize("num_beams", [1, 3])
def test_dataset_generate_in_padded_batches_equals_one_prompt_at_a_time(num_beams):
    """InstructDataset.generate (what evaluate() and sample.py decode with) sorts prompts by length
    and left-pads batches of them: each prediction equals that prompt decoded alone, in order."""
    import data

    enc = data.get_tokenizer("world-bytes")
    qs = ["ab", "a longer question here", "mid size q", "x", "another long question, longer", "q?!"]
    items = {"t": {"test": [(q, "answer") for q in qs], "train": [("q", "a")]}}
    ds = data.InstructDataset(items, 64, enc, "world-bytes", ["t"])
    model = tiny(vocab=enc.n_vocab, scale=0.3, block_size=64)
    prompts = [p for p, _ in ds.data["t"]["test"]]
    assert len({len(p) for p in prompts}) == len(prompts)  # every batch mixes lengths
    kw = dict(num_beams=num_beams, no_repeat_ngram_size=2)
    preds = ds.generate(model, prompts, 10, batch_size=4, **kw)
    for p, pred in zip(prompts, preds):
        alone = model.generate(torch.tensor([p]), 10, temperature=0, stop_token=ds.stop_token, **kw)
        assert pred[: alone.size(1) - len(p)] == alone[0, len(p) :].tolist()
        assert all(t == ds.stop_token for t in pred[alone.size(1) - len(p) :])
    if num_beams == 1:  # evaluate() scores exactly these predictions
        res = ds.evaluate(model, batch_size=4)
        assert res["t"]["correct"] == data.exact_matches(
            preds, [a for _, a in ds.data["t"]["test"]], ds.stop_token
        )


def test_compiled_decoding_equals_eager_and_follows_weight_changes():
    """compile=True (torch.compile of the one-token steps, weights frozen in the compiled graph)
    gives eager's tokens, greedy and beam search over a left-padded batch, and sees weights
    changed in place since it compiled."""
    model = tiny(scale=0.3)
    x, mask = left_pad([[5, 9, 2], [7, 1, 8, 3, 3, 4, 2], [40]])
    torch._dynamo.utils.counters.clear()
    for kw in (dict(temperature=0), dict(num_beams=3)):
        eager = model.generate(x, 8, attention_mask=mask, **kw)
        assert torch.equal(model.generate(x, 8, attention_mask=mask, compile=True, **kw), eager)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1  # compiled, not eager
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    kw = dict(attention_mask=mask, temperature=0)
    assert torch.equal(model.generate(x, 8, compile=True, **kw), model.generate(x, 8, **kw))
    torch.compiler.reset()  # the graphs hold a copy of the weights: free it for the other tests
