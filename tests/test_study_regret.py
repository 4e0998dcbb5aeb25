"""Study 3.1 (study/regret.py) on planted numbers: the rate ladder and its widening sweep, the quadratic-fit optimum
and the paired ratio interval, the departure iteration, each verdict rule (pass / fail / inconclusive, gates named),
the per-item losses against data.answer_loss, and the STUDY.md section. The stage's runs: `python -m study --quick`."""

import functools
import math

import numpy as np
import pytest
import torch
from test_study import SEEDS, items, planted  # the study's planted result (3 seeds, tasks t1, t2)

import data
import study.regret as regret
import study.regret_report as regret_report
import study.verdicts as study_verdicts
from model import GPT, GPTConfig


def test_ladder_is_the_one_to_six_point_three_steps_as_exact_literals():
    assert [regret.ladder(k) for k in range(-20, -14)] == [1e-4, 1.6e-4, 2.5e-4, 4e-4, 6.3e-4, 1e-3]
    assert regret.ladder(-21) == 6.3e-5 and regret.ladder(-10) == 1e-2


@pytest.mark.parametrize(
    'peak, widen, swept, best',
    [
        (-18, 2, [-19, -18, -17], -18),  # inside: nothing added
        (-15, 2, [-19, -18, -17, -16, -15], -15),  # widened up twice, the best on the last rung
        (-30, 2, [-21, -20, -19, -18, -17], -21),  # still on the edge after two steps: stops there
        (-30, 0, [-19, -18, -17], -19),  # widen=0: the rungs as given
    ],
)
def test_sweep_widens_past_the_edge_its_best_rung_sits_on(peak, widen, swept, best):
    calls = []

    def loss(k):
        calls.append(k)
        return abs(k - peak) / 10

    got, chosen, losses = regret.sweep([-19, -18, -17], loss, widen)
    assert got == swept and chosen == best and sorted(calls) == swept and set(losses) == set(swept)


def test_sweep_ranks_a_diverged_run_last():
    got, best, _ = regret.sweep([-3, -2, -1], lambda k: None if k == -1 else -k, 0)
    assert best == -2 and got == [-3, -2, -1]


def test_vertex_of_a_planted_parabola_clipped_to_the_bracket():
    xs = [-4.0, -3.8, -3.6]
    assert regret.vertex(xs, [(x + 3.73) ** 2 + 0.5 for x in xs]) == pytest.approx(-3.73)
    # the minimum lies left of the bracket: clipped to its edge
    assert regret.vertex(xs, [(x + 5.0) ** 2 for x in xs]) == pytest.approx(-4.0)
    # opens downwards: no vertex to trust, the lowest point given
    assert regret.vertex(xs, [1.0, 1.2, 0.9]) == -3.6


def per_item(lr_opt, lrs, seeds, noise, n=(30, 20), seed=0):
    """Per rate, per seed: {task: [[nll, tokens]]}: the task loss a parabola in log10(lr) around lr_opt, plus
    each item's noise at each rate (drawn from `seed`: two methods planted with the same seed have the same)."""
    rng = np.random.default_rng(seed)
    out = []
    for lr in lrs:
        level = 0.5 + 4 * (math.log10(lr) - math.log10(lr_opt)) ** 2
        noisy = {
            t: level + rng.normal(0, noise, size=(len(seeds), k)) for t, k in zip(('t1', 't2'), n)
        }
        out.append(
            [{t: [[3 * v, 3] for v in noisy[t][s]] for t in noisy} for s in range(len(seeds))]
        )
    return out


def test_fitted_optimum_recovers_a_planted_optimum():
    lrs = [1e-4, 1.6e-4, 2.5e-4]
    fit = (lrs, per_item(1.9e-4, lrs, [0, 1], noise=0.0))
    assert regret.fitted_optimum(*fit) == pytest.approx(1.9e-4, rel=1e-6)
    # the point estimate is train.py's number: per task NLL / tokens, the mean over tasks and seeds
    picks = {'t1': np.arange(30), 't2': np.arange(20)}
    assert regret.task_losses(fit[1][1], [0, 1], picks) == pytest.approx(
        0.5 + 4 * math.log10(1.6 / 1.9) ** 2
    )


def test_ratio_interval_is_paired_and_covers_the_planted_ratio():
    full_lrs, lora_lrs = [1e-4, 1.6e-4, 2.5e-4], [1e-3, 1.6e-3, 2.5e-3]
    full = (full_lrs, per_item(1.9e-4, full_lrs, [0, 1], noise=0.05))
    # the same items shifted by 10x: every resample moves both optima alike, the ratio exactly 10
    twin = (lora_lrs, per_item(1.9e-3, lora_lrs, [0, 1], noise=0.05))
    other = (lora_lrs, per_item(1.5e-3, lora_lrs, [0, 1], noise=0.05, seed=5))
    optima, ratios, spread = regret.bootstrap_optima(
        {'full': full, 'twin': twin, 'other': other}, n_boot=200
    )
    assert ratios['twin']['ratio'] == pytest.approx(10) and ratios['twin']['ci'] == pytest.approx(
        [10, 10]
    )
    lo, hi = optima['full']['ci']
    assert lo < optima['full']['lr'] < hi and 1e-4 <= lo and hi <= 2.5e-4 and hi / lo > 1.02
    lo, hi = ratios['other']['ci']
    assert lo < 1.5e-3 / 1.9e-4 < hi and hi / lo > 1.02  # independent noise: a real interval
    assert spread['spread'] == pytest.approx(
        max(r['ratio'] for r in ratios.values()) / min(r['ratio'] for r in ratios.values())
    )
    again = regret.bootstrap_optima({'full': full, 'twin': twin, 'other': other}, n_boot=200)
    assert again == (
        optima,
        ratios,
        spread,
    )  # its own RNG seed: the same numbers, the same interval


def test_departure_is_where_a_rank_leaves_full_fine_tuning_for_good():
    its = list(range(0, 700, 100))
    full = [(i, 3.0 - i / 300) for i in its]
    lift = lambda gaps: [(i, v + g) for (i, v), g in zip(full, gaps)]
    assert regret.departure(lift([0, 0, 0.01, 0.03, 0.05, 0.1, 0.2]), full) == 300
    # lags early, catches up, then leaves: the capacity limit is where it leaves for good
    assert regret.departure(lift([0, 0.3, 0.1, 0, 0, 0.05, 0.1]), full) == 500
    assert (
        regret.departure(lift([0, 0.3, 0, 0, 0.021, 0, 0.01]), full) is None
    )  # never, within the budget
    assert regret.departure(lift([0] * 6 + [0.5]), full) == 600
    with pytest.raises(ValueError, match='different iterations'):
        regret.departure(full[:-1], full)


def test_lr_verdict_band_spread_and_gates():
    ratio = lambda lo, hi: {'ratio': (lo * hi) ** 0.5, 'ci': [lo, hi]}
    spread = lambda lo, hi: {'spread': (lo + hi) / 2, 'ci': [lo, hi]}
    ok = {'lora_r1': ratio(8, 12), 'lora_r64': ratio(9, 14)}
    assert regret.lr_verdict(ok, spread(1.1, 1.8), []) == 'agrees'
    v = regret.lr_verdict({**ok, 'lora_r64': ratio(25, 40)}, spread(2.5, 4), [])
    assert v == 'does not reproduce: every ratio in [5, 20] no, within 2x of each other no'
    v = regret.lr_verdict(ok, spread(1.5, 2.5), [])
    assert v == 'inconclusive (every ratio in [5, 20] yes, within 2x of each other unsure)'
    v = regret.lr_verdict(ok, spread(2.5, 4), [])
    assert v == 'partly: every ratio in [5, 20] yes, within 2x of each other no'
    v = regret.lr_verdict({**ok, 'lora_r4': ratio(15, 30)}, spread(1.2, 1.9), [])
    assert v == 'inconclusive (every ratio in [5, 20] unsure, within 2x of each other yes)'
    gate = "gate failed: full's best rate 0.0001 is on the grid's edge after widening"
    assert regret.lr_verdict(ok, spread(1.1, 1.8), [gate]) == f'inconclusive ({gate})'


def test_learned_gates_name_a_run_that_did_not_learn_and_an_edge():
    sw = lambda best, losses, edge: {
        'lrs': [1, 2, 3],
        'val_loss': losses,
        'best': best,
        'edge': edge,
    }
    sweeps = {'a': sw(2, [0.6, 0.5, 0.7], False), 'b': sw(3, [2.5, 2.2, 2.1], True)}
    assert regret.learned_gates(sweeps, 2.0, ['a']) == []
    assert regret.learned_gates(sweeps, 2.0, ['a', 'b']) == [
        "gate failed: b did not learn (best val loss 2.1, needs < the base's 2.000)",
        "gate failed: b's best rate 3 is on the grid's edge after widening",
    ]


def test_capacity_verdict_on_planted_departures():
    assert regret.capacity_verdict({1: 200, 4: 600, 16: None}, []) == 'agrees'
    assert regret.capacity_verdict({1: 600, 4: 200}, []).startswith('disagrees (a higher rank')
    assert regret.capacity_verdict({1: 50, 4: 50}, []).startswith('does not reproduce')
    assert regret.capacity_verdict({1: None, 4: None}, []).startswith(
        'inconclusive (no rank leaves'
    )
    assert regret.capacity_verdict({1: 200, 4: 600}, ['gate failed: x']) == (
        'inconclusive (gate failed: x)'
    )


def test_attention_and_each_adapter_verdicts():
    assert regret.attention_verdict((-0.2, -0.3, -0.1), []) == 'agrees'
    assert regret.attention_verdict((0.0, -0.1, 0.1), []) == 'does not reproduce (no difference)'
    assert regret.attention_verdict((0.2, 0.1, 0.3), []) == 'disagrees (attention-only is higher)'
    assert regret.attention_verdict((-0.2, -0.3, -0.1), ['g']) == 'inconclusive (g)'
    assert regret.each_adapter_verdict({'a': 'yes', 'b': 'yes'}, [], 'forgets less') == 'agrees'
    assert regret.each_adapter_verdict({'a': 'yes', 'b': 'no'}, [], 'forgets less') == (
        'partly: a forgets less yes, b forgets less no'
    )
    assert regret.each_adapter_verdict({'a': 'no'}, [], 'learns less') == (
        'does not reproduce: a learns less no'
    )


# ---- the stage's rows on a planted study ------------------------------------------------------------------
def curve(gaps):
    return [[i * 100, 2.0 - i * 0.2 + g] for i, g in enumerate(gaps)]


def planted_regret(res, recall_after=None, lm_after=None, qv_p=0.4):
    """res['regret'] as the stage stores it: full fine-tuning and ranks 1, 4 (ratios 10 and 12), qv at rank 54,
    forgetting: the base recalls everything; full fine-tuning keeps half, the adapters 0.9 (recall_after)."""
    sw = lambda best, curve_: {
        'lrs': [best / 1.6, best, best * 1.6],
        'val_loss': [0.6, 0.5, 0.7],
        'val_acc': [0.5, 0.6, 0.4],
        'best': best,
        'edge': False,
        'curve': curve_,
        'trainable_params': 1000,
    }
    recall_after = {'full': 0.5, **(recall_after or {})}
    lm_after = {'full': 1.5, **(lm_after or {})}
    hits = lambda p: {k: [1] * round(20 * p) + [0] * (20 - round(20 * p)) for k in ('city', 'job')}
    forgetting = {'base': {'recall': hits(1.0), 'lm': [1.0 + 0.01 * w for w in range(8)]}}
    for m in res['mixture']:
        forgetting[m] = [
            {
                'seed': s,
                'recall': hits(recall_after.get(m, 0.9)),
                'lm': [lm_after.get(m, 1.1) + 0.01 * w for w in range(8)],
            }
            for s in SEEDS
        ]
    ratio = lambda r: {'ratio': r, 'ci': [r * 0.8, r * 1.25]}
    res['settings']['regret'] = dict(regret.FULL, ranks=[1, 4])
    res['regret'] = {
        'base_val_loss': 2.0,
        'sweeps': {
            'full': sw(1.6e-4, curve([0] * 7)),
            'lora_r1': sw(1.6e-3, curve([0, 0, 0.05, 0.1, 0.2, 0.3, 0.4])),
            'lora_r4': sw(1.6e-3, curve([0, 0, 0, 0, 0.05, 0.1, 0.2])),
            'qv_r54': {**sw(2.5e-3, None), 'curve': None},
        },
        'optima': {
            m: {'lr': lr, 'ci': [lr * 0.8, lr * 1.2]}
            for m, lr in (('full', 1.7e-4), ('lora_r1', 1.7e-3), ('lora_r4', 2.04e-3))
        },
        'ratios': {'lora_r1': ratio(10.0), 'lora_r4': ratio(12.0)},
        'spread': {'spread': 1.2, 'ci': [1.0, 1.5]},
        'lora_grid_centre': 1.6e-3,
        'qv': {
            'method': 'qv_r54',
            'rank': 54,
            'rows': [
                {
                    'seed': s,
                    'acc': {'avg': qv_p},
                    'correct': {t: items(qv_p, s) for t in ('t1', 't2')},
                }
                for s in SEEDS
            ],
        },
        'forgetting': forgetting,
        'figures': [],
    }
    return res


def rows(res):
    return {r['paper']: r for r in regret_report.verdicts(res)}


@pytest.fixture
def fast_ci(monkeypatch):
    """The paired CIs with 300 resamples (the planted differences are far from 0 or exactly 0): a fast suite."""
    fast = functools.partial(study_verdicts.paired_diff_ci, n_boot=300)
    monkeypatch.setattr(regret_report, 'paired_diff_ci', fast)
    monkeypatch.setattr(study_verdicts, 'paired_diff_ci', fast)


def test_every_claim_agrees_on_numbers_planted_to_agree(fast_ci):
    # every adapter below full fine-tuning (learns less), all retain more (forgets less)
    res = planted_regret(
        planted(mix={m: 0.5 for m in ('lora_qv_r12', 'multilora_3x4', 'lora_r1', 'nola')})
    )
    res['mixture']['lora_r12'] = planted(mix={'lora_r12': 0.6})['mixture']['lora_r12']
    got = rows(res)
    assert [v['verdict'] for v in got.values()] == ['agrees'] * 5, got
    assert 'r=1: 200, r=4: 400' in got['Without Regret: capacity']['finding']
    assert 'ratio 12.0 [9.6, 15.0]' in got['Without Regret: lr']['finding']


def test_each_claim_fails_or_is_inconclusive_as_its_numbers_say(fast_ci):
    # nola forgets as much as full fine-tuning; lora_r1 recalls more but its LM loss rises more: neither forgets less
    forget = dict(recall_after={'nola': 0.5}, lm_after={'nola': 1.5, 'lora_r1': 2.0})
    res = planted_regret(planted(), **forget, qv_p=0.7)
    res['regret']['ratios']['lora_r4'] = {'ratio': 30.0, 'ci': [25.0, 40.0]}
    res['regret']['spread'] = {'spread': 3.0, 'ci': [2.2, 4.0]}
    res['regret']['sweeps']['lora_r4']['curve'] = curve([0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    got = rows(res)
    assert got['Without Regret: lr']['verdict'].startswith('does not reproduce')
    assert got['Without Regret: capacity']['verdict'].startswith('disagrees (a higher rank leaves')
    # qv planted equal to all-Linears r=12 (0.7): the same items, no difference
    assert got['Without Regret: attention-only']['verdict'] == 'does not reproduce (no difference)'
    # MultiLoRA (0.8) is above full fine-tuning (0.7), three (0.7) equal: only r1, nola (0.6) learn less
    assert got['Learns Less']['verdict'] == (
        'partly: lora_qv_r12 learns less no, lora_r12 learns less no, multilora_3x4 learns less no, '
        'lora_r1 learns less yes, nola learns less yes'
    )
    assert got['Forgets Less']['verdict'] == (
        'partly: lora_qv_r12 forgets less yes, lora_r12 forgets less yes, multilora_3x4 forgets less yes, '
        'lora_r1 forgets less no, nola forgets less no'
    )
    # gates: a sweep on its edge, a base that recalls nothing, full fine-tuning that forgets nothing
    res = planted_regret(planted(recall=0.2), recall_after={'full': 1.0}, lm_after={'full': 1.0})
    res['regret']['sweeps']['lora_r1']['edge'] = True
    got = rows(res)
    assert got['Without Regret: lr']['verdict'] == (
        "inconclusive (gate failed: lora_r1's best rate 0.0016 is on the grid's edge after widening)"
    )
    v = got['Forgets Less']['verdict']
    assert v.startswith('inconclusive (gate failed: base: fact recall') and (
        'full fine-tuning forgets nothing measurable' in v
    )
    res['regret']['sweeps']['lora_r4']['val_loss'] = [2.5, 2.1, 2.4]
    assert rows(res)['Without Regret: capacity']['verdict'] == (
        "inconclusive (gate failed: lora_r4 did not learn (best val loss 2.1, needs < the base's 2.000))"
    )


def test_report_section_renders_the_tables_and_claims(tmp_path, fast_ci):
    res = planted_regret(planted())
    res['verdicts'] = study_verdicts.verdicts(res) + regret_report.verdicts(res)
    path = str(tmp_path / 'STUDY.md')
    study_verdicts.write_report(res, path, regret_report.report_lines(res))
    text = open(path).read()
    assert '## 8. LoRA Without Regret; LoRA Learns Less and Forgets Less (study 3.1)' in text
    assert (
        '| lora_r4 | 1,000 | 0.001: 0.600 (0.50) | 0.0016: 0.500 (0.60) | 0.00256: 0.700 (0.40) | 0.0016 | '
        in text
    )
    assert '| 400 | 1.200 | 1.400 | 1.250 |' in text and '| 600 | 0.800 | 1.200 | 1.000 |' in text
    assert (
        '| base | - | 1.000 | 1.035 |' in text
        and '| full | 0.700 ± 0.000 | 0.500 ± 0.000 | 1.535 ± 0.000 |' in text
    )
    for v in res['verdicts'][-5:]:
        assert f"| {v['paper']} | {v['claim']} | {v['finding']} | **{v['verdict']}** |" in text
    assert 'Batch size: not measured.' in text


# ---- measurement helpers against the library's own numbers ---------------------------------------------------
def test_item_losses_add_up_to_answer_loss():
    enc = data.get_tokenizer('world-bytes')
    qa = {'t': {'val': [('a b', 'c'), ('dd e', 'ff g'), ('h', 'ijk')]}, 'u': {'val': [('x', 'yz')]}}
    ds = data.InstructDataset(qa, 64, enc, 'world-bytes', ['t', 'u'])
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=16))
    got = regret.item_losses(model, ds)
    assert [len(got['t']), len(got['u'])] == [3, 1]
    for t in ('t', 'u'):
        nll, n_tok = ds.answer_loss(model, ds.data[t]['val'])
        assert sum(a for a, _ in got[t]) == pytest.approx(nll, rel=1e-5)
        assert sum(n for _, n in got[t]) == n_tok
    picks = {t: np.arange(len(v)) for t, v in got.items()}
    want = ds.evaluate(model, split='val')['avg']['loss']
    assert regret.task_losses([got], [0], picks) == pytest.approx(want, rel=1e-5)


def test_attention_rank_matches_all_linears_trainable_count():
    model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=2, n_head=2, n_embd=16))
    per_rank = lambda t: regret.lora_numbers_per_rank(model, t)
    assert per_rank('attn.q,attn.v') == 2 * 2 * (16 + 16) and per_rank('mlp.c_fc') == 2 * (16 + 64)
    assert per_rank('attn.q,attn.k,attn.v,attn.c_proj,mlp.c_fc,mlp.c_proj') == 2 * (4 * 32 + 2 * 80)
    assert (
        round(
            12
            * per_rank('attn.q,attn.k,attn.v,attn.c_proj,mlp.c_fc,mlp.c_proj')
            / per_rank('attn.q,attn.v')
        )
        == 54
    )


def test_window_losses_cover_the_held_out_text_once_in_order(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 32, size=203).astype(np.uint16)
    tokens.tofile(tmp_path / 'val.bin')
    stream = type('Stream', (), {'folder': str(tmp_path), 'meta': {'dtype': 'uint16'}})
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    got = regret.window_losses(model, stream, 8)
    assert len(got) == 25  # windows 0..8, 8..16, ..., 192..200 (+1 target each): every token once
    for j in (0, 24):
        x = torch.from_numpy(tokens[8 * j : 8 * j + 9].astype(np.int64))[None]
        assert got[j] == pytest.approx(model(x[:, :-1], x[:, 1:])[1].item(), abs=1e-5)
    assert regret.window_losses(model, stream, 8, n=3) == got[:3]


def test_report_section_says_not_run_until_the_stage_has_run():
    lines = regret_report.report_lines({'settings': {}, 'mixture': {}})
    assert lines[1] == regret_report.HEADING and 'Not run yet' in lines[3]
