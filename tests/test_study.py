"""Every config file parses and trains two iterations on a tiny stand-in model through train.main (the
same code path as the real run, tiny sizes); study_verdicts' statistics, gates, verdicts and write-up on planted
numbers in study.json's layout (per-item correctness, 3 seeds): the paired bootstrap CI, the equivalence margin,
the floor rule against the most-common-answer baseline, the gates and the verdicts they make inconclusive.
The smoke test of the real pipeline, `python -m study --quick` (every stage on tiny budgets, about a minute), runs
in the last test, twice: the second time from its records alone, as a fresh clone does."""

import csv
import glob
import json
import math
import os
import types

import numpy as np
import pytest
import torch
from helpers import hf_state_dict  # random HF-layout GPT-2 weights

import data
import study.run as study
import study.verdicts as study_verdicts
import train
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'config', '*.py')))
# skill LoRAs first: the CAT config composes them
CONFIGS.sort(key=lambda p: (os.path.basename(p).startswith('cat_'), p))
TINY = [
    '--max_iters=2',
    '--epochs=0',  # the GPT-2 E2E recipes count epochs; here two iterations
    '--eval_interval=2',
    '--eval_iters=1',
    '--log_interval=1',
    '--batch_size=2',
    '--block_size=32',
    '--final_eval=False',
    '--device=cpu',
    '--n_layer=1',
    '--n_head=2',
    '--n_embd=16',
]
N_LAYER, N_EMBD = 2, 16


def write_hf_dir(path, vocab, n_layer=N_LAYER, n_embd=N_EMBD, n_pos=64, seed=0):
    """A tiny GPT-2 in Hugging Face layout (config.json + pytorch_model.bin, Conv1D (in, out) weights)."""
    sd = hf_state_dict(n_layer=n_layer, n_embd=n_embd, vocab=vocab, n_pos=n_pos, seed=seed)
    C = n_embd
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'config.json'), 'w') as f:
        json.dump(
            {
                'n_positions': n_pos,
                'vocab_size': vocab,
                'n_layer': n_layer,
                'n_head': 2,
                'n_embd': C,
            },
            f,
        )
    torch.save(
        {'transformer.' + k: v for k, v in sd.items()}, os.path.join(path, 'pytorch_model.bin')
    )


def write_real_data(root):
    """Tiny E2E (official file names, columns mr, ref) and Alpaca (JSON list) sets under root/."""
    os.makedirs(os.path.join(root, 'e2e'))
    for name in ('trainset.csv', 'devset.csv', 'testset_w_refs.csv'):
        with open(os.path.join(root, 'e2e', name), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['mr', 'ref'])
            for i in range(6):
                w.writerow(
                    [
                        f'name[The Cat {i}], food[cheap], area[town]',
                        f'The Cat {i} is a cheap place in town.',
                    ]
                )
    os.makedirs(os.path.join(root, 'alpaca'))
    rows = [
        {
            'instruction': f'add {i} and {i}',
            'input': '' if i % 2 else 'numbers',
            'output': str(2 * i),
        }
        for i in range(40)
    ]
    with open(os.path.join(root, 'alpaca', 'alpaca_data.json'), 'w') as f:
        json.dump(rows, f)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """A tiny base checkpoint (train.py layout), a tiny GPT-2 directory, tiny real data; shared by all configs."""
    tmp = tmp_path_factory.mktemp('study')
    vocab = data.get_tokenizer('world').n_vocab
    torch.manual_seed(0)
    base = GPT(GPTConfig(block_size=64, vocab_size=vocab, n_layer=N_LAYER, n_head=2, n_embd=N_EMBD))
    torch.save(
        {'model_args': vars(base.config).copy(), 'model': base.state_dict()}, tmp / 'base.pt'
    )
    write_hf_dir(str(tmp / 'gpt2-tiny'), vocab)
    write_real_data(str(tmp / 'realdata'))
    return tmp


def expected_trainable(c, d=N_EMBD, n_layer=N_LAYER, total=None):
    """Trainable counts from docs/methods.md's formulas, per adapted matrix
    (d_in + d_out over the targets of every layer)."""
    io = {
        'attn.q': 2 * d,
        'attn.k': 2 * d,
        'attn.v': 2 * d,
        'attn.c_proj': 2 * d,
        'mlp.c_fc': 5 * d,
        'mlp.c_proj': 5 * d,
    }
    targets = c['adapter_targets'].split(',')
    m, dio = n_layer * len(targets), n_layer * sum(io[t] for t in targets)
    return {
        'lora': c['lora_r'] * dio,
        'multilora': c['multilora_n'] * c['multilora_r'] * dio + m * c['multilora_n'],
        'nola': m * (c['nola_k'] + c['nola_l']),
        'cat': m * 2,
        '': total,
    }[c['adapter']]


@pytest.mark.parametrize('config', CONFIGS)
def test_config_parses_and_trains_two_iterations(config, env):
    c = train.parse_args([config])
    # the skill LoRAs adapt every Linear (config comments)
    skills = (
        'lora_skill1',
        'lora_skill2',
        'cat_composite',
    )
    # the GPT-2 papers' q, v
    assert c['adapter_targets'] == (
        'attn.q,attn.k,attn.v,attn.c_proj,mlp.c_fc,mlp.c_proj'
        if any(k in config for k in skills)
        else 'attn.q,attn.v'
    )
    name = os.path.basename(config)[:-3]
    args = [config, *TINY, f'--out_dir={env / name}']
    # real GPT-2 on real data: a tiny HF directory and tiny files
    if c['init_from'].startswith('gpt2'):
        assert (
            c['tokenizer'] == 'gpt2'
            and c['dtype'] == 'bfloat16'
            and c['dataset'] in ('e2e', 'alpaca')
        )
        args += [
            f'--init_from={env / "gpt2-tiny"}',
            '--tokenizer=world',
            f'--data_dir={env / "realdata"}',
        ]
    elif c['init_from'] == 'scratch':  # config/e2e_small.py: a small GPT from scratch on the devset
        assert c['dataset'] == 'e2e' and c['e2e_train'] == 'devset'
        args += [f'--data_dir={env / "realdata"}']
    else:
        # the default base, what `python train.py` writes
        assert c['init_from'] == 'out/base/ckpt.pt'
        args += [f'--init_from={env / "base.pt"}']
    if c['adapter'] == 'cat':
        assert c['cat_adapters'] == 'out/lora_skill1/ckpt.pt,out/lora_skill2/ckpt.pt'
        args += [
            f'--cat_adapters={env / "lora_skill1" / "ckpt.pt"},{env / "lora_skill2" / "ckpt.pt"}'
        ]
    s = train.main(args)
    assert s['iters'] == 2 and math.isfinite(s['val_loss'])
    assert s['trainable_params'] == expected_trainable(c, total=s['total_params'])
    ckpt = torch.load(env / name / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['iter_num'] == 2 and ckpt['config']['dataset'] == c['dataset']
    if c['adapter']:
        assert 'model' not in ckpt and ckpt['adapter']['config']['method'] == c['adapter']
    elif c['init_from'] == 'scratch':
        assert 'adapter' not in ckpt and ckpt['base'] is None  # trained from nothing
    else:
        assert 'adapter' not in ckpt and ckpt['base']['path'].endswith('base.pt')


def test_config_names_cover_the_study():
    names = {os.path.basename(p) for p in CONFIGS}
    need = {
        'finetune_mixture.py',
        'lora_mixture.py',
        'multilora_mixture.py',
        'nola_mixture.py',
        'lora_skill1.py',
        'lora_skill2.py',
        'cat_composite.py',
    }
    need |= {f'gpt2_{d}_{a}.py' for d in ('e2e', 'alpaca') for a in ('lora', 'multilora', 'nola')}
    assert need <= names, need - names
    # NOLA's point: fewer trainable numbers than LoRA rank 1 at the mixture's shape
    nola = train.parse_args(['config/nola_mixture.py'])
    assert nola['nola_k'] + nola['nola_l'] < 1 * 2 * train.DEFAULTS['n_embd']


def test_gpu_configs_follow_the_reference_settings():
    for d in ('e2e', 'alpaca'):
        lora, multi, nola = (
            train.parse_args([f'config/gpt2_{d}_{a}.py']) for a in ('lora', 'multilora', 'nola')
        )
        for k in (
            'init_from',
            'dataset',
            'adapter_targets',
            'batch_size',
            'max_iters',
            'warmup_iters',
            'label_smoothing',
        ):
            assert lora[k] == multi[k] == nola[k], k  # one run, three adapters
        assert lora['init_from'] == 'gpt2-medium' and lora['adapter_targets'] == 'attn.q,attn.v'
        assert multi['multilora_n'] * multi['multilora_r'] == lora['lora_r']  # LoRA's A/B budget
        # and its s
        assert (
            multi['multilora_alpha'] / multi['multilora_r'] == lora['lora_alpha'] / lora['lora_r']
        )
        # NOLA's reference settings for GPT-2 M: rank 8, k = l = 512, s = 1, lr 5e-3, no decay, no dropout
        assert (
            nola['nola_r'],
            nola['nola_k'],
            nola['nola_l'],
            nola['nola_alpha'] / nola['nola_r'],
        ) == (8, 512, 512, 1.0)
        assert (nola['learning_rate'], nola['weight_decay'], nola['nola_dropout']) == (
            5e-3,
            0.0,
            0.0,
        )
    e2e = train.parse_args(['config/gpt2_e2e_lora.py'])  # the LoRA paper's E2E settings
    assert (
        e2e['lora_r'],
        e2e['lora_alpha'],
        e2e['lora_dropout'],
        e2e['learning_rate'],
        e2e['weight_decay'],
        e2e['label_smoothing'],
        e2e['batch_size'],
    ) == (4, 32.0, 0.1, 2e-4, 0.01, 0.1, 8)
    # the GPT-2 L line of its comment
    large = train.parse_args(
        [
            'config/gpt2_e2e_nola.py',
            '--init_from=gpt2-large',
            '--nola_k=256',
            '--nola_l=256',
            '--nola_alpha=2.0',
            '--learning_rate=1e-2',
        ]
    )
    assert (
        large['nola_alpha'] / large['nola_r'] == 0.25 and large['nola_k'] == large['nola_l'] == 256
    )


def test_mean_sd_pm():
    assert abs(study_verdicts.sd([1.0, 2.0, 3.0]) - 1.0) < 1e-12 and study_verdicts.sd([5.0]) == 0.0
    assert study_verdicts.pm([1.0, 3.0]) == '2.000 ± 1.414'


def test_most_common_answer_baseline_on_planted_items():
    items = {
        'x': {
            'train': [('q', 'a'), ('q', 'a'), ('q', 'b')],
            'test': [('q', 'a'), ('q', 'b'), ('q', 'a'), ('q', 'c')],
        },
        'y': {
            'train': [('q', 'b'), ('q', 'a'), ('q', 'b'), ('q', 'a')],
            'test': [('q', 'a'), ('q', 'b')],
        },
    }
    b = study_verdicts.most_common_answer_baseline(items)
    # y: a 2-2 tie goes to the alphabetically first answer, 'a'
    assert b == {
        'x': 0.5,
        'y': 0.5,
        'avg': 0.5,
    }
    # only the items the study evaluates
    b2 = study_verdicts.most_common_answer_baseline(items, max_items=1)
    assert b2 == {'x': 1.0, 'y': 1.0, 'avg': 1.0}
    with pytest.raises(ValueError, match="task 'z' has no train items"):
        study_verdicts.most_common_answer_baseline({'z': {'train': [], 'test': [('q', 'a')]}})


def noisy_rows(rng, means, sd_item=0.0, seeds=3, seed_effect=0.0, tasks=12):
    """One {task: exact match} per seed: task means + a per-seed shift shared by every method (seed_effect)."""
    shift = [seed_effect * (s - 1) for s in range(seeds)]
    return [
        {
            f't{j}': means[j] + shift[s] + rng.normal(0, sd_item)
            if sd_item
            else means[j] + shift[s]
            for j in range(tasks)
        }
        for s in range(seeds)
    ]


def test_paired_bootstrap_covers_a_known_difference_and_is_deterministic():
    rng = np.random.default_rng(1)
    task_means = rng.uniform(0.2, 0.8, 12)
    b = [
        {t: v + 0.25 * (s - 1) for t, v in zip((f't{j}' for j in range(12)), task_means)}
        for s in range(3)
    ]
    # a = b + 0.1, paired
    a = [{t: v + 0.10 + rng.normal(0, 0.01) for t, v in row.items()} for row in b]
    diff, lo, hi = study_verdicts.paired_diff_ci(a, b)
    # the seed shift (±0.25) cancels in pairs
    assert abs(diff - 0.10) < 0.01 and lo < 0.10 < hi and hi - lo < 0.03
    # fixed RNG: the same CI every time
    assert study_verdicts.paired_diff_ci(a, b) == (
        diff,
        lo,
        hi,
    )
    assert study_verdicts.paired_diff_ci(a, b, seed=7) != (diff, lo, hi)  # ... drawn from that RNG
    # per-item correctness (0/1 per item): items are resampled too, the CI still covers the difference
    items_b = [{t: [1.0] * 50 + [0.0] * 50 for t in ('u', 'v')} for _ in range(3)]
    items_a = [{t: [1.0] * 60 + [0.0] * 40 for t in ('u', 'v')} for _ in range(3)]
    d2, lo2, hi2 = study_verdicts.paired_diff_ci(items_a, items_b)
    assert abs(d2 - 0.10) < 1e-12 and 0.0 < lo2 < 0.10 < hi2
    with pytest.raises(ValueError, match='one row per seed'):
        study_verdicts.paired_diff_ci([0.5, 0.6], [0.4, 0.5, 0.6])
    with pytest.raises(ValueError, match='different units'):
        study_verdicts.paired_diff_ci([{'t0': 0.5}], [{'t1': 0.5}])


def test_equivalence_margin_floor_rule_and_gates():
    rng = np.random.default_rng(2)
    means = rng.uniform(0.4, 0.8, 12)
    b = noisy_rows(rng, means, seed_effect=0.05)
    shifted = lambda d, sd_item=0.002: [
        {t: v + d + rng.normal(0, sd_item) for t, v in row.items()} for row in b
    ]
    off = {'a': 0.30, 'b': 0.29}  # both well above the baseline
    ci = study_verdicts.paired_diff_ci(shifted(0.01), b)
    assert (
        study_verdicts.equivalence(ci, off)[0] == 'matches' and ci[2] < study_verdicts.EQUIV_MARGIN
    )
    ci5 = study_verdicts.paired_diff_ci(shifted(0.05), b)
    status, text = study_verdicts.equivalence(ci5, off)
    assert status == 'differs' and text.startswith('differs (CI [+0.0')
    wide = study_verdicts.paired_diff_ci(shifted(0.01, sd_item=0.15), b)
    status, text = study_verdicts.equivalence(wide, off)
    assert status == 'inconclusive' and 'wider than ±0.03' in text and wide[2] - wide[1] > 0.06
    # the floor: two methods that agree closely, both at the most-common-answer baseline
    status, text = study_verdicts.equivalence(ci, {'lora': 0.02, 'full': 0.01})
    assert status == 'inconclusive' and text.startswith(
        'inconclusive (at the floor: lora only +0.020, full only +0.010'
    )
    status, text = study_verdicts.equivalence(ci, {'lora': 0.30, 'full': 0.095})
    # 0.10 is the gate
    assert status == 'inconclusive' and 'full only +0.095' in text and 'lora' not in text
    # a failed gate makes an otherwise matching pair inconclusive, naming the gate and its value
    res = planted(mix={'full': 0.50})
    failed = study_verdicts.gate_failures(study_verdicts.gates(res), ('full_ft', 'best_adapter'))
    assert failed == ['gate failed: mixture: full fine-tuning, avg exact match 0.500, needs ≥ 0.55']
    assert study_verdicts.equivalence(ci, off, failed_gates=failed) == (
        'inconclusive',
        f'inconclusive ({failed[0]})',
    )
    assert (
        study_verdicts.direction((0.1, 0.01, 0.2)) == 'higher'
        and study_verdicts.direction((-0.1, -0.2, -0.01)) == 'lower'
    )
    assert study_verdicts.direction((0.1, -0.01, 0.2)) == 'no difference'


# ---------------------------------------------------------------------------------------------------
# verdicts and gates on planted numbers, in study.json's layout (study.py writes it, study_verdicts reads it)

SEEDS, N_ITEMS, R = (0, 1, 2), 40, 12
QV, LORA, MULTI = f'lora_qv_r{R}', f'lora_r{R}', f'multilora_3x{R // 3}'
# exact match per task
MIX = {
    'full': 0.70,
    QV: 0.70,
    LORA: 0.70,
    MULTI: 0.80,
    'lora_r1': 0.60,
    'nola': 0.60,
}
EFF = {'full': 30.0, LORA: 4.0, MULTI: 10.0, 'lora_r1': 1.0, 'nola': 7.0}  # effective rank of ΔW
# composite (manual_qa) exact match
COMP = {
    'base': 0.0,
    'skill A alone': 0.0,
    'skill B alone': 0.0,
    study_verdicts.UPPER_BOUND: 0.9,
    'CAT': 0.8,
    'CAT (softmax)': 0.7,
    'task arithmetic': 0.3,
    'ΔW averaging': 0.2,
    'TIES': 0.35,
    'data mixing': 0.4,
    'data mixing + composite split': 0.45,
}
PARAMS = {'full': 10**6, QV: 3072, LORA: 6144, MULTI: 6156, 'lora_r1': 512, 'nola': 256}


def items(p, seed, n=N_ITEMS):
    """Per-item exact match, a share p of them right; which items are right varies with the seed (same p: same
    items, so two methods planted with the same p have identical per-item correctness)."""
    k = round(p * n)
    row = [1] * k + [0] * (n - k)
    return row[-7 * seed % n :] + row[: -7 * seed % n]


def planted(
    mix=None, comp=None, recall=0.9, baseline=0.2, skill_a_recall=0.9, skill_b_known=0.9, q4=None
):
    """A study result with planted numbers (3 seeds, 2 tasks of N_ITEMS items): every accuracy is computed from the
    planted per-item correctness, as study.py stores it. mix / comp override MIX / COMP (a value None drops the run)."""
    mix, comp = {**MIX, **(mix or {})}, {**COMP, **(comp or {})}
    tasks = ('t1', 't2')

    def mix_row(m, p, s):
        correct = {t: items(p, s) for t in tasks}
        acc = {t: mean(c) for t, c in correct.items()}
        return {
            'seed': s,
            'name': f'mix_{m}_s{s}',
            'lr': 1e-3,
            'acc': {**acc, 'avg': mean(list(acc.values()))},
            'correct': correct,
            'val_loss': 1.0 + s / 10,
            'train_time_s': 60.0,
            'trainable_params': PARAMS[m],
            'file_bytes': 4 * PARAMS[m] + 900,
            'payload_bytes': 4 * PARAMS[m],
        }

    mixture = {m: [mix_row(m, p, s) for s in SEEDS] for m, p in mix.items()}
    q4_rows = [mix_row('nola', MIX['nola'] if q4 is None else q4, s) for s in SEEDS]

    def spec(ms):
        return {
            m: {
                'effective_rank_mean': [EFF.get(m, 3.0) + 0.1 * s for s in SEEDS],
                'top_share_mean': [0.3] * 3,
                'energy_rank_mean': [2.0] * 3,
                'rel_norm_mean': [0.5] * 3,
                'intruders_0.5': [0.0] * 3,
            }
            for m in ms
        }

    def comp_row(label, p, s):
        c = items(p, s)
        return {
            'seed': s,
            'manual_qa': mean(c),
            'correct': c,
            'format': 0.9,
            'content': mean(c),
            'known_qa': skill_b_known if label == 'skill B alone' else 0.5,
            'recall': skill_a_recall if label == 'skill A alone' else 0.5,
            'lambda': 1.0 if label in ('task arithmetic', 'TIES') else None,
            'examples': ['Paris'],
        }

    entry = lambda m: {
        'acc': [r['acc']['avg'] for r in mixture[m]],
        'file_bytes': [4 * PARAMS[m] + 900] * 3,
        'payload_bytes': [4 * PARAMS[m]] * 3,
        'trainable_params': PARAMS[m],
    }
    return {
        'settings': {'R': R, 'seeds': list(SEEDS), 'mix_iters': 1500, 'sweep_iters': 1500},
        'torch_threads': 1,
        'seconds': {'base': 10.0, 'mixture': 20.0},
        'base': {
            'path': 'out/study/base/ckpt.pt',
            'fingerprint': 'abc123',
            'iters': 800,
            'reused': False,
            'val_loss': 1.234,
            'params': 2_000_000,
            'model_args': {
                'n_layer': 4,
                'n_head': 4,
                'n_embd': 128,
                'block_size': 128,
                'vocab_size': 500,
            },
            'recall': {'lives_in': recall, 'works_as': recall, 'all': recall, 'manual': 0.0},
        },
        'baseline': {'t1': baseline, 't2': baseline, 'avg': baseline},
        'lr': {
            m: {
                'grid': [1e-3, 3e-3, 1e-2],
                'iters': 1500,
                'seed': 0,
                'chosen': 3e-3,
                'val_acc': [0.5, 0.61, 0.4],
                'val_loss': [1.1, 1.0, 1.2],
            }
            for m in mix
        },
        'mixture': mixture,
        'spectra': {
            'per_method': spec([m for m in mix if m != QV]),
            'qv': spec([QV, 'full']),
            'figure': 'results/spectra/spectra.png',
            'table_seed0': 'the table of seed 0',
        },
        'compression': {
            'nola_fp32': entry('nola'),
            'lora_r1': entry('lora_r1'),
            'nola_4bit': {
                'acc': [r['acc']['avg'] for r in q4_rows],
                'rows': q4_rows,
                'file_bytes': [300] * 3,
                'payload_bytes': [200] * 3,
                'trainable_params': PARAMS['nola'],
            },
        },
        'composition': {
            'runs': {
                k: [comp_row(k, p, s) for s in SEEDS] for k, p in comp.items() if p is not None
            },
            'trainable': {k: 1000 for k in comp},
            'baseline': 0.05,
            'manual': {'descriptions': 16, 'wordings': 8},
            'upper': {'rank': 32, 'iters': 3000},
            'sweeps': {
                'CAT': {
                    'grid': [3e-3, 1e-2],
                    'chosen': 1e-2,
                    'val_acc': [0.5, 0.7],
                    'val_loss': [1, 0.9],
                }
            },
            'sizes': {
                'manual': {'train': 200},
                'known_qa': {'train': 400},
                'manual_qa': {'train': 30, 'val': 80, 'test': N_ITEMS},
                'manual_qa_ample': {'train': 300},
            },
        },
        'control': {
            'tasks': ['shift', 'reverse', 'shift_reverse'],  # data.SKILL1, SKILL2, COMPOSITE
            'seed': 0,
            'iters': 900,
            'acc': {
                'skill1 alone': {'shift': 0.95, 'reverse': 0.0, 'shift_reverse': 0.0},
                'skill2 alone': {'shift': 0.0, 'reverse': 0.85, 'shift_reverse': 0.0},
                'CAT': {'shift': 0.9, 'reverse': 0.8, 'shift_reverse': 0.0},
            },
        },
    }


def mean(xs):
    return sum(xs) / len(xs)


def verdict_rows(res):
    return {r['paper']: r for r in study.verdicts(res)}


def test_planted_result_is_what_it_says():
    """The builder itself: accuracies follow from the planted items, identical p gives identical items."""
    res = planted()
    full, qv = res['mixture']['full'], res['mixture'][QV]
    assert [r['acc']['avg'] for r in full] == [0.7] * 3 and [r['correct'] for r in full] == [
        r['correct'] for r in qv
    ]
    assert full[0]['correct']['t1'] != full[1]['correct']['t1']  # the seeds differ item by item
    assert [r['manual_qa'] for r in res['composition']['runs']['CAT']] == [0.8] * 3


def test_lora_agrees_when_identical_items_well_above_the_baseline():
    res = planted()
    v = verdict_rows(res)
    assert all(g['pass'] for g in res['gates']), res['gates']
    assert v['LoRA']['verdict'] == 'agrees' and v['LoRA']['agrees']
    # identical per-item correctness: every paired difference is 0
    assert v['LoRA']['ci'] == (
        0.0,
        0.0,
        0.0,
    )
    assert 'paired diff +0.000, 95% CI [+0.000, +0.000]: matches' in v['LoRA']['finding']
    assert 'minus the baseline 0.200: +0.500 vs +0.500' in v['LoRA']['finding']
    # the other papers, planted to hold: MultiLoRA flatter, closer to full FT, more accurate; NOLA = LoRA r=1
    assert v['MultiLoRA']['verdict'] == 'agrees' and v['NOLA']['verdict'] == 'agrees', (
        v['MultiLoRA'],
        v['NOLA'],
    )


def test_lora_disagrees_when_far_below_full_fine_tuning():
    res = planted(mix={QV: 0.40})  # +0.20 over the baseline: off the floor, and 0.30 below full FT
    v = verdict_rows(res)
    assert all(g['pass'] for g in res['gates']), res['gates']
    assert (
        v['LoRA']['verdict']
        == (
            'disagrees (LoRA r=12 on W_q,W_v is below full fine-tuning beyond ±0.03; '
            'on all Linears: matches)'
        )
        and not v['LoRA']['agrees']
    )
    diff, lo, hi = v['LoRA']['ci']
    assert abs(diff + 0.30) < 1e-9 and hi < -study_verdicts.EQUIV_MARGIN
    # above full fine-tuning by as much is no match either
    v2 = verdict_rows(planted(mix={'full': 0.60, QV: 0.95}))
    assert v2['LoRA']['verdict'].startswith('disagrees (LoRA r=12 on W_q,W_v is above')


def test_lora_at_the_floor_is_inconclusive_and_names_the_floor(monkeypatch):
    # the baseline is 0.60: full FT and LoRA (identical items, 0.65) pass the gates but sit only +0.05 over it
    res = planted(mix={'full': 0.65, QV: 0.65, LORA: 0.80}, baseline=0.60)
    v = verdict_rows(res)
    # the floor alone, no gate, makes it inconclusive
    assert all(g['pass'] for g in res['gates']), res['gates']
    assert (
        v['LoRA']['verdict']
        == (
            'inconclusive (at the floor: lora_qv_r12 only +0.050, full only +0.050 over the '
            'most-common-answer baseline (needs ≥ +0.10))'
        )
        and not v['LoRA']['agrees']
    )
    # with a lower floor the same numbers match: the floor rule is what decided
    monkeypatch.setattr(
        study_verdicts.equivalence, '__defaults__', (study_verdicts.EQUIV_MARGIN, 0.01, ())
    )
    assert verdict_rows(res)['LoRA']['verdict'] == 'agrees'
    # both at the baseline itself (and full FT below its gate): inconclusive, naming the floor and the gate
    monkeypatch.undo()
    v3 = verdict_rows(planted(mix={m: 0.20 for m in MIX}))
    assert v3['LoRA']['verdict'].startswith(
        'inconclusive (at the floor: lora_qv_r12 only +0.000, full only +0.000'
    )
    assert (
        'gate failed: mixture: full fine-tuning, avg exact match 0.200, needs ≥ 0.55'
        in v3['LoRA']['verdict']
    )
    assert v3['NOLA']['verdict'].startswith(
        'inconclusive (at the floor: nola only +0.000, lora_r1 only +0.000'
    )


def test_equivalence_margin_decides_the_lora_verdict(monkeypatch):
    # LoRA 0.025 below full FT on every item set: inside ±0.03 (but the CI, items resampled, reaches past it)
    res = planted(mix={'full': 0.70, QV: 0.675})
    st = verdict_rows(res)['LoRA']['verdict']
    assert st.startswith('inconclusive (CI [') and 'wider than ±0.03' in st
    monkeypatch.setattr(
        study_verdicts.equivalence, '__defaults__', (0.10, study_verdicts.FLOOR_GATE, ())
    )
    assert verdict_rows(res)['LoRA']['verdict'] == 'agrees'  # a wider margin holds the whole CI


def test_failed_gates_make_the_cat_verdict_inconclusive_and_name_the_gate():
    res = planted(recall=0.5)
    v = verdict_rows(res)
    want = "gate failed: base: fact recall in the corpus's own wording ('p lives in' -> city) 0.500, needs ≥ 0.7"
    assert v['CAT']['verdict'].startswith(f'inconclusive ({want})') and not v['CAT']['agrees']
    # what it measured
    assert v['CAT']['verdict'].endswith('as measured: beats merging yes, beats data mixing yes')
    # the base gates the mixture verdicts too
    assert v['LoRA']['verdict'] == f'inconclusive ({want})'
    v2 = verdict_rows(planted(comp={study_verdicts.UPPER_BOUND: 0.3}))
    assert v2['CAT']['verdict'].startswith(
        'inconclusive (gate failed: composition: upper-bound LoRA (manual + ample '
        'composite Q/A) on the composite 0.300, needs ≥ 0.8)'
    )
    # the composition gates are CAT's only
    assert not v2['CAT']['agrees'] and v2['LoRA']['verdict'] == 'agrees'
    # a skill that answers the composite
    v3 = verdict_rows(planted(comp={'skill A alone': 0.1}, skill_b_known=0.5))
    assert (
        'gate failed: composition: skill A alone on the composite (manual_qa) 0.100, needs ≤ 0.05'
        in v3['CAT']['verdict']
    )
    assert (
        'gate failed: composition: skill B (Q/A LoRA on known people) on its own test (known_qa) 0.500'
        in v3['CAT']['verdict']
    )


def test_cat_verdict_follows_its_paired_items():
    v = verdict_rows(planted())
    assert v['CAT']['verdict'] == 'agrees' and v['CAT']['agrees']
    f = v['CAT']['finding']
    assert (
        'CAT vs TIES (the best merge)' in f
        and 'vs data mixing + composite split (the better data mixing)' in f
    )
    # 0.80 - 0.35 (TIES), clear margin
    assert abs(v['CAT']['ci'][0] - 0.45) < 1e-9 and v['CAT']['ci'][1] > 0.3
    # CAT's softmax weights count when they do better
    v_sm = verdict_rows(planted(comp={'CAT': 0.1, 'CAT (softmax)': 0.8}))
    assert v_sm['CAT']['verdict'] == 'agrees' and 'CAT (softmax) vs TIES' in v_sm['CAT']['finding']
    # below every merge and data mixing: the claim does not reproduce (the gates hold: a finding, not an artefact)
    low = verdict_rows(planted(comp={'CAT': 0.1, 'CAT (softmax)': 0.05}))
    assert low['CAT']['verdict'] == 'does not reproduce: beats merging no, beats data mixing no'
    assert (
        not low['CAT']['agrees']
        and ', 95% CI [' in low['CAT']['finding']
        and ': lower)' in low['CAT']['finding']
    )
    # level with them: no difference is no win either
    tie = verdict_rows(planted(comp={'CAT': 0.45, 'CAT (softmax)': 0.0, 'TIES': 0.45}))
    assert tie['CAT']['verdict'] == 'does not reproduce: beats merging no, beats data mixing no'
    part = verdict_rows(
        planted(comp={'CAT': 0.4, 'CAT (softmax)': 0.0, 'data mixing + composite split': 0.6})
    )
    assert part['CAT']['verdict'] == 'partly: beats merging yes, beats data mixing no'


def test_gates_report_measured_values_and_pass_flags():
    G = study_verdicts.gates(planted())
    assert [g['key'] for g in G] == [k for k, *_ in study_verdicts.GATES]
    got = {g['key']: (g['measured'], g['pass']) for g in G}
    want = {
        'base_recall': 0.9,
        'full_ft': 0.7,
        'best_adapter': 0.8,
        'skill_a_own': 0.9,
        'skill_b_own': 0.9,
        'skill_a_composite': 0.0,
        'skill_b_composite': 0.0,
        'upper_bound': 0.9,
        'control_skill1': 0.95,
        'control_skill2': 0.85,
    }
    assert {k: v for k, (v, _) in got.items()} == pytest.approx(want)
    assert all(ok is True for _, ok in got.values())
    assert [g['threshold'] for g in G] == [
        '≥ 0.7',
        '≥ 0.55',
        '≥ 0.45',
        '≥ 0.8',
        '≥ 0.8',
        '≤ 0.05',
        '≤ 0.05',
        '≥ 0.8',
        '≥ 0.8',
        '≥ 0.8',
    ]
    # which adapter was best
    assert next(g for g in G if g['key'] == 'best_adapter')['gate'].endswith(f'({MULTI})')
    # each gate fails on its own side of its threshold; '≤' gates fail above theirs
    res = planted(
        mix={'full': 0.5, MULTI: 0.4, QV: 0.4, LORA: 0.4, 'lora_r1': 0.4, 'nola': 0.4},
        recall=0.6,
        comp={'skill A alone': 0.1, 'skill B alone': 0.025, study_verdicts.UPPER_BOUND: None},
        skill_a_recall=0.7,
        skill_b_known=0.85,
    )
    res['control']['acc']['skill2 alone']['reverse'] = (
        0.5  # a half-learned skill: the control says nothing
    )
    G2 = {g['key']: g for g in study_verdicts.gates(res)}
    assert {k: g['pass'] for k, g in G2.items()} == {
        'base_recall': False,
        'full_ft': False,
        'best_adapter': False,
        'skill_a_own': False,
        'skill_b_own': True,
        'skill_a_composite': False,
        'skill_b_composite': True,
        'upper_bound': None,
        'control_skill1': True,
        'control_skill2': False,
    }
    assert (
        G2['skill_b_composite']['measured'] == pytest.approx(0.025)
        and G2['upper_bound']['measured'] is None
    )
    lines = study_verdicts.format_gates(list(G2.values()))
    assert 'gate FAIL: base: fact recall' in lines[0] and lines[0].endswith('≥ 0.7, measured 0.600')
    assert (
        lines[-1]
        == 'gate FAIL: control: the reverse skill alone on its own test ≥ 0.8, measured 0.500'
    )
    assert lines[-3] == (
        'gate not measured: composition: upper-bound LoRA (manual + ample composite Q/A) on the '
        'composite ≥ 0.8, measured -'
    )
    assert study_verdicts.gate_failures(list(G2.values()), ('skill_b_own', 'upper_bound')) == [
        'gate not measured: composition: upper-bound LoRA (manual + ample composite Q/A) on the composite'
    ]


def test_verdicts_refuse_unpaired_seeds():
    res = planted()
    res['mixture']['nola'][2]['seed'] = 5
    with pytest.raises(ValueError, match='mixture runs of nola and full have different seeds'):
        study.verdicts(res)
    with pytest.raises(ValueError, match='pair the same items'):
        study_verdicts.paired_diff_ci([{'t': [1, 0, 1]}], [{'t': [1, 0]}])


def test_write_report_renders_every_gate_table_and_published_number(tmp_path):
    res = planted(comp={study_verdicts.UPPER_BOUND: 0.3})
    res['verdicts'] = study.verdicts(res)
    res.update(
        trained=2,
        train_seconds={'base': 0, 'mixture': 700.4},
        runs_per_stage={'base': 0, 'mixture': 6},
    )
    path = str(tmp_path / 'STUDY.md')
    study_verdicts.write_report(res, path)
    text = open(path).read()
    assert not os.path.exists(path + '.tmp')
    for g in res['gates']:
        cell = 'pass' if g['pass'] else '**fail**'
        assert f"| {g['gate']} | {g['threshold']} | {g['measured']:.3f} | {cell} |" in text, g
    assert (
        '| composition: upper-bound LoRA (manual + ample composite Q/A) on the composite | ≥ 0.8 | 0.300 | **fail** |'
        in text
    )
    assert '| method | lr 1 | lr 2 | lr 3 | chosen |' in text
    for m in MIX:
        assert f'| {m} | 0.001: 0.500 | 0.003: 0.610 | 0.01: 0.400 | **0.003** |' in text, m
    for label in COMP:
        assert f'| {label} | 1,000 | ' in text, label
    assert (
        '| TIES | 1,000 | 0.350 ± 0.000 | 0.90 ± 0.00 | 0.35 ± 0.00 | 0.500 ± 0.000 | 0.500 ± 0.000 | 1, 1, 1 |'
        in text
    )
    # the composition's design and its tuning, as the stage recorded them
    assert '16 descriptions of each of its people, each fact in one of 8 wordings' in text
    assert 'a LoRA of rank 32 trained 3,000 iterations' in text
    assert '| CAT | 0.003: 0.500, 0.01: 0.700 | 0.01 |' in text
    assert 'control: the reverse skill alone on its own test: 0.850 (pass)' in text
    for published in ('70.4', '68.2', '70.1', '69.9', '36,864', '184,320', '+43%', '+12%'):
        assert published in text, published
    for v in res['verdicts']:
        assert f"| {v['paper']} | {v['claim']} | {v['finding']} | **{v['verdict']}** |" in text
    assert 'inside ±0.03 and both methods at least +0.10 over the baseline' in text
    assert 'Fact recall in the corpus\'s own wording: 0.900 (lives_in 0.90, works_as 0.90)' in text
    assert (
        'Wall time per stage, each as its last invocation measured it (s; the last one trained 2 runs and '
        'reused the others): base 10, mixture 20 (total 30; 1 torch threads, runs trained 1 at a time, on one '
        'thread each).' in text
    )
    assert 'at the load of that time): mixture 700 (6 runs) (total 700).' in text


def test_check_refuses_a_stage_without_finite_numbers():
    assert study.STAGES == (
        'base',
        'mixture',
        'spectra',
        'compression',
        'composition',
        'control',
        'regret',  # study 3.1 (study/regret.py, tests/test_study_regret.py)
    )
    res = {s: {'x': 1.0} for s in study.STAGES + ('baseline', 'gates', 'verdicts')}
    study.check(res)
    with pytest.raises(
        RuntimeError,
        match=r'stage spectra produced non-finite numbers at spectra.y\[0\] \(1 in all\)',
    ):
        study.check(dict(res, spectra={'y': [float('nan')]}))
    with pytest.raises(RuntimeError, match='stage composition produced no numbers'):
        study.check(dict(res, composition={}))
    with pytest.raises(RuntimeError, match='stage gates produced no numbers'):
        study.check({k: v for k, v in res.items() if k != 'gates'})
    res = planted()  # a whole planted study, with its verdicts: finite everywhere
    res['regret'] = {'x': 1.0}  # study 3.1's numbers: tests/test_study_regret.py plants them
    res['verdicts'] = study.verdicts(res)
    study.check(res)


def test_next_rate_walks_the_1_3_10_ladder_as_exact_literals():
    assert [study.next_rate(lr, up=True) for lr in (1e-4, 3e-4, 1e-2)] == [3e-4, 1e-3, 3e-2]
    assert [study.next_rate(lr, up=False) for lr in (1e-4, 3e-4, 1e-2)] == [3e-5, 1e-4, 3e-3]


@pytest.mark.parametrize(
    'peak, widen, grid_swept, best',
    [
        (3e-3, 2, [1e-3, 3e-3, 1e-2], 3e-3),  # best inside: nothing added
        (3e-2, 2, [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], 3e-2),  # widened up until the best is inside
        (
            1.0,
            2,
            [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
            1e-1,
        ),  # still at the edge after `widen` steps: stops there
        (1e-4, 1, [3e-4, 1e-3, 3e-3, 1e-2], 3e-4),  # widened down
        (1.0, 0, [1e-3, 3e-3, 1e-2], 1e-2),  # widen=0: the grid as given
    ],
)
def test_tune_lr_widens_past_the_edge_its_best_rate_sits_on(peak, widen, grid_swept, best):
    calls = []

    def score(lr):  # a planted val curve peaking at `peak`; each rate must be trained once
        calls.append(lr)
        return (-abs(math.log10(lr / peak)), 0.0)

    grid, chosen, scores = study.tune_lr([1e-3, 3e-3, 1e-2], score, widen)
    assert grid == grid_swept and chosen == best
    assert sorted(calls) == sorted(grid_swept) and set(scores) == set(grid_swept)


def test_tune_lrs_tunes_grids_together_and_announces_each_rounds_rates():
    """Several grids at once give what tune_lr gives each, and ahead() hears every rate before it is scored,
    each round's rates of every grid together (what the study trains side by side)."""
    peaks = {'inside': 3e-3, 'up': 3e-2, 'down': 1e-4}
    score = lambda k, lr: (-abs(math.log10(lr / peaks[k])), 0.0)
    rounds, scored = [], []
    together = study.tune_lrs(
        {k: [1e-3, 3e-3, 1e-2] for k in peaks},
        lambda k, lr: scored.append((k, lr)) or score(k, lr),
        2,
        rounds.append,
    )
    for k in peaks:
        assert together[k] == study.tune_lr([1e-3, 3e-3, 1e-2], lambda lr, k=k: score(k, lr), 2)
    assert rounds[0] == [(k, lr) for k in peaks for lr in (1e-3, 3e-3, 1e-2)]
    assert rounds[1:] == [[('up', 3e-2), ('down', 3e-4)], [('up', 1e-1), ('down', 1e-4)]]
    assert scored == [p for r in rounds for p in r]  # nothing scored unannounced, nothing twice


def test_runs_trained_side_by_side_are_those_trained_one_at_a_time(env, tmp_path, monkeypatch):
    """Two runs in worker processes, then the same two in this process: the same numbers, bit for bit (each on
    one thread). A run that failed side by side raises its error where it is asked for, without training."""
    S = {k: str(tmp_path / k) for k in ('base_dir', 'results', 'out')}
    args = ['config/finetune_mixture.py', *TINY, f'--init_from={env / "base.pt"}']
    jobs = [(f'lr{lr:g}', args + [f'--learning_rate={lr}']) for lr in (1e-3, 3e-2)]
    too_long = ('too_long', args + ['--block_size=128'])  # the base's is 64: train.main refuses it

    def studies(**kw):
        st = study.Study(S, log=lambda s: None, **kw)
        st.base_fp = 'planted'
        return st

    side = studies(workers=2)
    side.train_side_by_side(jobs + [too_long])
    assert side.trained == {'lr0.001', 'lr0.03'} and 'exceeds' in str(side.failed['too_long'][1])

    def no_training(argv):
        raise AssertionError(f'retrained {argv}')

    monkeypatch.setattr(study.train, 'main', no_training)
    with pytest.raises(ValueError, match='exceeds'):
        side.train(*too_long)
    kept = {name: side.train(name, argv)['summary'] for name, argv in jobs}
    monkeypatch.undo()
    one = studies(fresh=True, workers=1)
    for name, argv in jobs:
        again = one.train(name, argv)['summary']
        assert again['val_loss'] == kept[name]['val_loss'] and again['iters'] == 2
    assert kept['lr0.001']['val_loss'] != kept['lr0.03']['val_loss']


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """train.main recorded instead of run: (the argv of each call, the study's folders under tmp_path)."""
    calls = []

    def fake(argv):  # and its checkpoint, empty
        calls.append(argv)
        out_dir = next(a for a in argv if a.startswith('--out_dir='))[len('--out_dir=') :]
        open(os.path.join(out_dir, 'ckpt.pt'), 'w').close()
        return {'train_time_s': float(len(calls)), 'val_loss': 2.0}  # each training its own time

    monkeypatch.setattr(study.train, 'main', fake)
    folders = {k: str(tmp_path / k) for k in ('base_dir', 'results', 'out')}
    return calls, folders


def test_fresh_retrains_each_run_once_per_invocation(fake_train):
    calls, S = fake_train

    world_version = ['v1']

    def invocation(fresh):
        st = study.Study(S, fresh=fresh, log=lambda s: None)
        st.base_fp = 'planted'
        st.dataset = lambda name: types.SimpleNamespace(fingerprint=f'{name}-{world_version[0]}')
        # the sweep's run, then seed 0's: the same
        st.train('run_a', ['--learning_rate=1.0'])
        st.train('run_a', ['--learning_rate=1.0'])
        st.train('run_b', ['--learning_rate=2.0'])

    invocation(fresh=False)
    assert len(calls) == 2
    invocation(fresh=False)  # everything reused from results/runs
    assert len(calls) == 2
    invocation(fresh=True)  # retrained, each once
    assert len(calls) == 4
    world_version[0] = 'v2'  # the tasks changed (a new world.VERSION): every run trains again, once
    invocation(fresh=False)
    assert len(calls) == 6


def test_a_run_built_on_another_runs_checkpoint_retrains_when_that_run_does(fake_train):
    calls, S = fake_train
    st = study.Study(S, log=lambda s: None)
    st.base_fp = 'planted'
    st.dataset = lambda name: types.SimpleNamespace(fingerprint=name)
    cat = lambda: st.train('cat', [f'--cat_adapters={st.ckpt("skill")}', '--adapter=cat'])
    st.train('skill', ['--max_iters=600'])
    cat()
    cat()  # the skill unchanged: reused
    assert len(calls) == 2
    st.train('skill', ['--max_iters=1500'])  # the skill retrained with another budget
    cat()
    assert len(calls) == 4 and calls[-1][0].startswith('--cat_adapters=')


def test_numbers_from_a_checkpoint_are_kept_and_a_gone_checkpoint_retrains_as_recorded(fake_train):
    calls, S = fake_train
    st = study.Study(S, log=lambda s: None)
    st.base_fp = 'planted'
    st.dataset = lambda name: types.SimpleNamespace(fingerprint=name)
    st.train('skill', ['--learning_rate=1.0'])
    assert st.checkpoint('skill') == st.ckpt('skill') and len(calls) == 1  # there: kept
    computed = []
    measure = lambda: computed.append(1) or {'acc': 0.5}
    assert st.cached('skill', 'test', measure) == {'acc': 0.5}
    assert st.cached('skill', 'test', measure) == {'acc': 0.5} and len(computed) == 1
    assert st.derived('merge', ['skill'], measure, lam=1) == {'acc': 0.5}
    st.derived('merge', ['skill'], measure, lam=1)
    assert len(computed) == 2  # kept
    st.derived('merge', ['skill'], measure, lam=2)
    assert len(computed) == 3  # other parameters: computed again
    os.remove(st.ckpt('skill'))  # gone (as in a fresh clone): retrained, with the same arguments
    assert st.checkpoint('skill') == st.ckpt('skill')
    assert len(calls) == 2 and calls[1] == calls[0]
    assert 'test' not in st.record('skill')  # what was measured on the old weights goes
    st.derived('merge', ['skill'], measure, lam=2)
    assert len(computed) == 4  # and what depends on them is measured again
    st.train('skill', ['--learning_rate=2.0'])  # other arguments: the same
    st.derived('merge', ['skill'], measure, lam=2)
    assert len(computed) == 5


def test_a_fresh_clone_rebuilds_the_study_from_its_records_without_training(tmp_path, monkeypatch):
    """The quick study once; then its checkpoints deleted (what a clone has: the records in results/runs,
    not out/) and train.main made to fail: every number comes back, the same, from the records."""
    argv = ['--quick', f'--out={tmp_path / "out"}', f'--results={tmp_path / "results"}']
    first = study.main(argv)
    ckpts = glob.glob(str(tmp_path / 'out' / '*' / 'ckpt.pt'))
    assert len(ckpts) > 20
    for path in ckpts:
        if os.path.basename(os.path.dirname(path)) != 'base':
            os.remove(path)

    def no_training(argv):
        raise AssertionError(f'retrained {argv}')

    monkeypatch.setattr(study.train, 'main', no_training)
    again = study.main(argv)
    # the same base, reused the second time (its training summary is not kept); the rest the same
    assert again['base']['reused'] and again['base']['fingerprint'] == first['base']['fingerprint']
    assert first['trained'] > 20 and again['trained'] == 0
    for res in (first, again):
        del (
            res['seconds'],
            res['base'],
            res['trained'],
            res['runs_per_stage']['base'],
            res['train_seconds']['base'],
        )
    assert json.loads(json.dumps(first)) == json.loads(json.dumps(again))
