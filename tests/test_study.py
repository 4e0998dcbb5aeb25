"""Every config file parses and trains two iterations on a tiny stand-in model through train.main (the
same code path as the real run, tiny sizes); study.py's statistics and verdicts on planted numbers: the paired
bootstrap CI, the equivalence margin, the floor rule against the most-common-answer baseline, the gates."""
import csv
import glob
import json
import math
import os

import numpy as np
import pytest
import torch
from helpers import hf_state_dict  # random HF-layout GPT-2 weights

import data
import study
import train
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'config', '*.py')))
# skill LoRAs first: the CAT config composes them
CONFIGS.sort(key=lambda p: (os.path.basename(p).startswith('cat_'), p))
TINY = ['--max_iters=2', '--eval_interval=2', '--eval_iters=1', '--log_interval=1', '--batch_size=2',
        '--block_size=32', '--final_eval=False', '--device=cpu', '--n_layer=1', '--n_head=2', '--n_embd=16']
N_LAYER, N_EMBD = 2, 16


def write_hf_dir(path, vocab, n_layer=N_LAYER, n_embd=N_EMBD, n_pos=64, seed=0):
    """A tiny GPT-2 in Hugging Face layout (config.json + pytorch_model.bin, Conv1D (in, out) weights)."""
    sd = hf_state_dict(n_layer=n_layer, n_embd=n_embd, vocab=vocab, n_pos=n_pos, seed=seed)
    C = n_embd
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'config.json'), 'w') as f:
        json.dump({'n_positions': n_pos, 'vocab_size': vocab, 'n_layer': n_layer, 'n_head': 2, 'n_embd': C}, f)
    torch.save({'transformer.' + k: v for k, v in sd.items()}, os.path.join(path, 'pytorch_model.bin'))


def write_real_data(root):
    """Tiny E2E (official file names, columns mr, ref) and Alpaca (JSON list) sets under root/."""
    os.makedirs(os.path.join(root, 'e2e'))
    for name in ('trainset.csv', 'devset.csv', 'testset_w_refs.csv'):
        with open(os.path.join(root, 'e2e', name), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['mr', 'ref'])
            for i in range(6):
                w.writerow([f'name[The Cat {i}], food[cheap], area[town]', f'The Cat {i} is a cheap place in town.'])
    os.makedirs(os.path.join(root, 'alpaca'))
    rows = [{'instruction': f'add {i} and {i}', 'input': '' if i % 2 else 'numbers', 'output': str(2 * i)} for i in range(40)]
    with open(os.path.join(root, 'alpaca', 'alpaca_data.json'), 'w') as f:
        json.dump(rows, f)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """A tiny base checkpoint (train.py layout), a tiny GPT-2 directory, tiny real data; shared by all configs."""
    tmp = tmp_path_factory.mktemp('study')
    vocab = data.get_tokenizer('world').n_vocab
    torch.manual_seed(0)
    base = GPT(GPTConfig(block_size=64, vocab_size=vocab, n_layer=N_LAYER, n_head=2, n_embd=N_EMBD))
    torch.save({'model_args': vars(base.config).copy(), 'model': base.state_dict()}, tmp / 'base.pt')
    write_hf_dir(str(tmp / 'gpt2-tiny'), vocab)
    write_real_data(str(tmp / 'realdata'))
    return tmp


def expected_trainable(c, d=N_EMBD, n_layer=N_LAYER, total=None):
    """Trainable counts from docs/methods.md's formulas, per adapted matrix (d_in + d_out over the targets of every layer)."""
    io = {'attn.q': 2 * d, 'attn.k': 2 * d, 'attn.v': 2 * d, 'attn.c_proj': 2 * d, 'mlp.c_fc': 5 * d, 'mlp.c_proj': 5 * d}
    targets = c['adapter_targets'].split(',')
    m, dio = n_layer * len(targets), n_layer * sum(io[t] for t in targets)
    return {'lora': c['lora_r'] * dio, 'multilora': c['multilora_n'] * c['multilora_r'] * dio + m * c['multilora_n'],
            'nola': m * (c['nola_k'] + c['nola_l']), 'cat': m * 2, '': total}[c['adapter']]


@pytest.mark.parametrize('config', CONFIGS)
def test_config_parses_and_trains_two_iterations(config, env):
    c = train.parse_args([config])
    skills = ('lora_skill1', 'lora_skill2', 'cat_composite')  # the skill LoRAs adapt every Linear (config comments)
    assert c['adapter_targets'] == ('attn.q,attn.k,attn.v,attn.c_proj,mlp.c_fc,mlp.c_proj'
                                    if any(k in config for k in skills) else 'attn.q,attn.v')  # the GPT-2 papers' q, v
    name = os.path.basename(config)[:-3]
    args = [config, *TINY, f'--out_dir={env / name}']
    if c['init_from'].startswith('gpt2'):  # real GPT-2 on real data: a tiny HF directory and tiny files
        assert c['tokenizer'] == 'gpt2' and c['dtype'] == 'bfloat16' and c['dataset'] in ('e2e', 'alpaca')
        args += [f'--init_from={env / "gpt2-tiny"}', '--tokenizer=world', f'--data_dir={env / "realdata"}']
    else:
        assert c['init_from'] == 'out/base/ckpt.pt'  # the default base, what `python train.py` writes
        args += [f'--init_from={env / "base.pt"}']
    if c['adapter'] == 'cat':
        assert c['cat_adapters'] == 'out/lora_skill1/ckpt.pt,out/lora_skill2/ckpt.pt'
        args += [f'--cat_adapters={env / "lora_skill1" / "ckpt.pt"},{env / "lora_skill2" / "ckpt.pt"}']
    s = train.main(args)
    assert s['iters'] == 2 and math.isfinite(s['val_loss'])
    assert s['trainable_params'] == expected_trainable(c, total=s['total_params'])
    ckpt = torch.load(env / name / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['iter_num'] == 2 and ckpt['config']['dataset'] == c['dataset']
    if c['adapter']:
        assert 'model' not in ckpt and ckpt['adapter']['config']['method'] == c['adapter']
    else:
        assert 'adapter' not in ckpt and ckpt['base']['path'].endswith('base.pt')


def test_config_names_cover_the_study():
    names = {os.path.basename(p) for p in CONFIGS}
    need = {'finetune_mixture.py', 'lora_mixture.py', 'multilora_mixture.py', 'nola_mixture.py', 'lora_skill1.py',
            'lora_skill2.py', 'cat_composite.py'}
    need |= {f'gpt2_{d}_{a}.py' for d in ('e2e', 'alpaca') for a in ('lora', 'multilora', 'nola')}
    assert need <= names, need - names
    # NOLA's point: fewer trainable numbers than LoRA rank 1 at the mixture's shape
    nola = train.parse_args(['config/nola_mixture.py'])
    assert nola['nola_k'] + nola['nola_l'] < 1 * 2 * train.DEFAULTS['n_embd']


def test_gpu_configs_follow_the_reference_settings():
    for d in ('e2e', 'alpaca'):
        lora, multi, nola = (train.parse_args([f'config/gpt2_{d}_{a}.py']) for a in ('lora', 'multilora', 'nola'))
        for k in ('init_from', 'dataset', 'adapter_targets', 'batch_size', 'max_iters', 'warmup_iters', 'label_smoothing'):
            assert lora[k] == multi[k] == nola[k], k  # one run, three adapters
        assert lora['init_from'] == 'gpt2-medium' and lora['adapter_targets'] == 'attn.q,attn.v'
        assert multi['multilora_n'] * multi['multilora_r'] == lora['lora_r']  # LoRA's A/B budget
        assert multi['multilora_alpha'] / multi['multilora_r'] == lora['lora_alpha'] / lora['lora_r']  # and its s
        # NOLA's reference settings for GPT-2 M: rank 8, k = l = 512, s = 1, lr 5e-3, no decay, no dropout
        assert (nola['nola_r'], nola['nola_k'], nola['nola_l'], nola['nola_alpha'] / nola['nola_r']) == (8, 512, 512, 1.0)
        assert (nola['learning_rate'], nola['weight_decay'], nola['nola_dropout']) == (5e-3, 0.0, 0.0)
    e2e = train.parse_args(['config/gpt2_e2e_lora.py'])  # the LoRA paper's E2E settings
    assert (e2e['lora_r'], e2e['lora_alpha'], e2e['lora_dropout'], e2e['learning_rate'], e2e['weight_decay'],
            e2e['label_smoothing'], e2e['batch_size']) == (4, 32.0, 0.1, 2e-4, 0.01, 0.1, 8)
    large = train.parse_args(['config/gpt2_e2e_nola.py', '--init_from=gpt2-large', '--nola_k=256', '--nola_l=256',
                              '--nola_alpha=2.0', '--learning_rate=1e-2'])  # the GPT-2 L line of its comment
    assert large['nola_alpha'] / large['nola_r'] == 0.25 and large['nola_k'] == large['nola_l'] == 256


def test_mean_sd_pm():
    assert abs(study.sd([1.0, 2.0, 3.0]) - 1.0) < 1e-12 and study.sd([5.0]) == 0.0
    assert study.pm([1.0, 3.0]) == '2.000 ± 1.414'


def test_most_common_answer_baseline_on_planted_items():
    items = {'x': {'train': [('q', 'a'), ('q', 'a'), ('q', 'b')], 'test': [('q', 'a'), ('q', 'b'), ('q', 'a'), ('q', 'c')]},
             'y': {'train': [('q', 'b'), ('q', 'a'), ('q', 'b'), ('q', 'a')], 'test': [('q', 'a'), ('q', 'b')]}}
    b = study.most_common_answer_baseline(items)
    assert b == {'x': 0.5, 'y': 0.5, 'avg': 0.5}  # y: a 2-2 tie goes to the alphabetically first answer, 'a'
    b2 = study.most_common_answer_baseline(items, max_items=1)  # only the items the study evaluates
    assert b2 == {'x': 1.0, 'y': 1.0, 'avg': 1.0}
    with pytest.raises(ValueError, match="task 'z' has no train items"):
        study.most_common_answer_baseline({'z': {'train': [], 'test': [('q', 'a')]}})


def noisy_rows(rng, means, sd_item=0.0, seeds=3, seed_effect=0.0, tasks=12):
    """One {task: exact match} per seed: task means + a per-seed shift shared by every method (seed_effect)."""
    shift = [seed_effect * (s - 1) for s in range(seeds)]
    return [{f't{j}': means[j] + shift[s] + rng.normal(0, sd_item) if sd_item else means[j] + shift[s]
             for j in range(tasks)} for s in range(seeds)]


def test_paired_bootstrap_covers_a_known_difference_and_is_deterministic():
    rng = np.random.default_rng(1)
    task_means = rng.uniform(0.2, 0.8, 12)
    b = [{t: v + 0.25 * (s - 1) for t, v in zip((f't{j}' for j in range(12)), task_means)} for s in range(3)]
    a = [{t: v + 0.10 + rng.normal(0, 0.01) for t, v in row.items()} for row in b]  # a = b + 0.1, paired
    diff, lo, hi = study.paired_diff_ci(a, b)
    assert abs(diff - 0.10) < 0.01 and lo < 0.10 < hi and hi - lo < 0.03  # the seed shift (±0.25) cancels in pairs
    assert study.paired_diff_ci(a, b) == (diff, lo, hi)                     # fixed RNG: the same CI every time
    assert study.paired_diff_ci(a, b, seed=7) != (diff, lo, hi)             # ... drawn from that RNG
    # per-item correctness (0/1 per item): items are resampled too, the CI still covers the difference
    items_b = [{t: [1.0] * 50 + [0.0] * 50 for t in ('u', 'v')} for _ in range(3)]
    items_a = [{t: [1.0] * 60 + [0.0] * 40 for t in ('u', 'v')} for _ in range(3)]
    d2, lo2, hi2 = study.paired_diff_ci(items_a, items_b)
    assert abs(d2 - 0.10) < 1e-12 and 0.0 < lo2 < 0.10 < hi2
    with pytest.raises(ValueError, match='one row per seed'):
        study.paired_diff_ci([0.5, 0.6], [0.4, 0.5, 0.6])
    with pytest.raises(ValueError, match='different units'):
        study.paired_diff_ci([{'t0': 0.5}], [{'t1': 0.5}])


def test_equivalence_margin_floor_rule_and_gates():
    rng = np.random.default_rng(2)
    means = rng.uniform(0.4, 0.8, 12)
    b = noisy_rows(rng, means, seed_effect=0.05)
    shifted = lambda d, sd_item=0.002: [{t: v + d + rng.normal(0, sd_item) for t, v in row.items()} for row in b]
    off = {'a': 0.30, 'b': 0.29}   # both well above the baseline
    ci = study.paired_diff_ci(shifted(0.01), b)
    assert study.equivalence(ci, off)[0] == 'matches' and ci[2] < study.EQUIV_MARGIN
    ci5 = study.paired_diff_ci(shifted(0.05), b)
    status, text = study.equivalence(ci5, off)
    assert status == 'differs' and text.startswith('differs (CI [+0.0')
    wide = study.paired_diff_ci(shifted(0.01, sd_item=0.15), b)
    status, text = study.equivalence(wide, off)
    assert status == 'inconclusive' and 'wider than ±0.03' in text and wide[2] - wide[1] > 0.06
    # the floor: two methods that agree closely, both at the most-common-answer baseline
    status, text = study.equivalence(ci, {'lora': 0.02, 'full': 0.01})
    assert status == 'inconclusive' and text.startswith('inconclusive (at the floor: lora only +0.020, full only +0.010')
    status, text = study.equivalence(ci, {'lora': 0.30, 'full': 0.095})
    assert status == 'inconclusive' and 'full only +0.095' in text and 'lora' not in text  # 0.10 is the gate
    # a failed gate makes an otherwise matching pair inconclusive, naming the gate and its value
    G = study.gates(planted(ACC, EFF, COMP, full=[0.50, 0.52, 0.48]))
    failed = study.gate_failures(G, ('full_ft', 'best_adapter'))
    assert failed == ['gate failed: mixture: full fine-tuning, avg exact match 0.500, needs ≥ 0.55']
    assert study.equivalence(ci, off, failed_gates=failed) == ('inconclusive', f'inconclusive ({failed[0]})')
    assert study.direction((0.1, 0.01, 0.2)) == 'higher' and study.direction((-0.1, -0.2, -0.01)) == 'lower'
    assert study.direction((0.1, -0.01, 0.2)) == 'no difference'


TASKS = {'t1': 0.02, 't2': -0.02}   # per-task offsets around each seed's average
BASELINE = {'t1': 0.25, 't2': 0.15, 'avg': 0.20}


def planted(acc, eff_rank, comp, nola_params=256, q4=None, full=None, upper=(0.9, 0.9, 0.9), skill1_own=0.9):
    """A minimal study result with planted per-seed (and per-task) numbers, in study.json's layout."""
    acc = dict(acc, full=full or acc['full'])
    rows = lambda xs, p: [{'seed': s, 'acc': {'avg': x, **{t: x + o for t, o in TASKS.items()}}, 'trainable_params': p,
                           'payload_bytes': 4 * p, 'file_bytes': 4 * p + 900} for s, x in enumerate(xs)]
    mix = {m: rows(acc[m], p) for m, p in zip(('full', 'lora_r12', 'multilora_3x4', 'lora_r1', 'nola'),
                                              (10 ** 6, 6144, 6156, 512, nola_params))}
    spec = {m: {'effective_rank_mean': xs} for m, xs in eff_rank.items()}
    nola = {'acc': acc['nola'], 'payload_bytes': [4 * nola_params] * 3, 'file_bytes': [1] * 3, 'trainable_params': nola_params}
    zero = [0.0] * 3
    sk = {**{m: {data.COMPOSITE: xs} for m, xs in comp.items()},
          'skill1 alone': {data.SKILL1: [skill1_own] * 3, data.COMPOSITE: zero},
          'skill2 alone': {data.SKILL2: [0.85] * 3, data.COMPOSITE: zero}}
    if upper:
        sk[study.UPPER_BOUND] = {data.COMPOSITE: list(upper)}
    return {'settings': {'R': 12}, 'mixture': mix, 'spectra': {'per_method': spec}, 'baseline': dict(BASELINE),
            'skills': {'acc': sk},
            'compression': {'nola_fp32': nola, 'nola_4bit': dict(nola, acc=q4 or acc['nola']),
                            'lora_r1': {'acc': acc['lora_r1'], 'payload_bytes': [2048] * 3, 'file_bytes': [1] * 3,
                                        'trainable_params': 512}}}


HI, MID, LO = [0.80, 0.82, 0.78], [0.50, 0.52, 0.48], [0.20, 0.22, 0.18]
ACC = {'full': [0.60, 0.62, 0.58], 'lora_r12': [0.61, 0.61, 0.59], 'multilora_3x4': HI, 'lora_r1': [0.55, 0.56, 0.54],
       'nola': [0.56, 0.55, 0.55]}
EFF = {'full': [30.0] * 3, 'lora_r12': [4.0, 4.1, 3.9], 'multilora_3x4': [10.0, 10.2, 9.8], 'lora_r1': [1.0] * 3,
       'nola': [7.0] * 3}
COMP = {'CAT': HI, 'ΔW averaging': LO, 'TIES': MID, 'data mixing': MID}


def test_verdicts_are_computed_from_the_numbers():
    res = planted(ACC, EFF, COMP)
    v = {r['paper']: r for r in study.verdicts(res)}
    assert all(r['agrees'] for r in v.values()), {p: r['verdict'] for p, r in v.items()}
    assert all(g['pass'] for g in res['gates']), res['gates']
    assert 'TIES' in v['CAT']['finding'] and '95% CI [' in v['LoRA']['finding']  # the better merge; the CI shown
    # numbers off the floor that differ -> disagreement; equal within the CI -> "no difference"
    acc2 = dict(ACC, lora_r12=[0.45, 0.47, 0.46], multilora_3x4=[0.45, 0.47, 0.44], nola=[0.40, 0.41, 0.39])
    comp2 = dict(COMP, CAT=[0.51, 0.49, 0.50])
    v2 = {r['paper']: r for r in study.verdicts(planted(acc2, dict(EFF, multilora_3x4=[4.0, 4.2, 3.8]), comp2))}
    assert not any(r['agrees'] for r in v2.values()), {p: r['verdict'] for p, r in v2.items()}
    assert v2['LoRA']['verdict'] == 'disagrees (LoRA r=12 is below full fine-tuning beyond ±0.03)'
    assert 'no difference' in v2['MultiLoRA']['finding'] and v2['MultiLoRA']['verdict'].startswith('does not reproduce')
    assert v2['CAT']['verdict'].startswith('does not reproduce') and 'NOLA below LoRA r=1' in v2['NOLA']['verdict']
    # NOLA's premise: fewer trainable numbers than LoRA rank 1
    v3 = {r['paper']: r for r in study.verdicts(planted(ACC, EFF, COMP, nola_params=4096))}
    assert 'no fewer trainable' in v3['NOLA']['verdict']


def test_verdicts_at_the_floor_and_with_failed_gates_are_inconclusive():
    at_base = [0.21, 0.20, 0.22]   # the baseline is 0.20: these methods learned nothing, and agree
    floor = {m: at_base for m in ACC}
    v = {r['paper']: r for r in study.verdicts(planted(floor, EFF, COMP, full=[0.60, 0.61, 0.62]))}
    assert v['NOLA']['verdict'].startswith('inconclusive (at the floor: nola only +0.010, lora_r1 only +0.010')
    assert not v['NOLA']['agrees'] and 'gate failed: mixture: best adapter' in v['NOLA']['verdict']
    # a gate failure propagates: full fine-tuning below 0.55 makes the LoRA verdict inconclusive, with its value
    v2 = {r['paper']: r for r in study.verdicts(planted(dict(ACC, lora_r12=[0.50, 0.52, 0.48]), EFF, COMP,
                                                         full=[0.50, 0.52, 0.48]))}
    assert v2['LoRA']['verdict'] == ('inconclusive (gate failed: mixture: full fine-tuning, avg exact match 0.500, '
                                     'needs ≥ 0.55)') and not v2['LoRA']['agrees']
    # composition: no upper-bound run -> "not measured", and a weak skill LoRA -> failed; CAT's win is not claimed
    res = planted(ACC, EFF, COMP, upper=None, skill1_own=0.3)
    v3 = {r['paper']: r for r in study.verdicts(res)}
    assert v3['CAT']['verdict'].startswith('inconclusive (gate failed: composition: skill 1 LoRA on its own task')
    assert 'gate not measured: composition: upper-bound LoRA' in v3['CAT']['verdict'] and not v3['CAT']['agrees']
    assert v3['CAT']['verdict'].endswith('at this budget: beats merging yes, beats data mixing yes')
    ub = [g for g in res['gates'] if g['key'] == 'upper_bound'][0]
    assert ub['measured'] is None and ub['pass'] is None
    assert 'gate not measured: composition: upper-bound' in '\n'.join(study.format_gates(res['gates']))


def test_check_refuses_a_stage_without_finite_numbers():
    res = {s: {'x': 1.0} for s in ('base', 'mixture', 'spectra', 'skills', 'compression', 'baseline', 'gates',
                                   'verdicts')}
    study.check(res)
    with pytest.raises(RuntimeError, match='stage spectra produced non-finite numbers at spectra.y'):
        study.check(dict(res, spectra={'y': [float('nan')]}))
    with pytest.raises(RuntimeError, match='stage skills produced no numbers'):
        study.check(dict(res, skills={}))
