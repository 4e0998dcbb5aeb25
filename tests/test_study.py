"""Every config file parses and trains two iterations on a tiny stand-in model through train.main (the
same code path as the real run, tiny sizes); study.py's statistics say "no difference" when they should."""
import csv
import glob
import json
import math
import os

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
    """The issue's formulas, per adapted matrix (d_in + d_out summed over the targets of every layer)."""
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


def test_compare_calls_differences_within_the_spread_no_difference():
    assert study.compare([0.50, 0.52, 0.48], [0.49, 0.51, 0.47]) [0] == 0      # diff 0.01, spread 0.028
    sign, diff, spread = study.compare([0.80, 0.82, 0.78], [0.50, 0.52, 0.48])
    assert sign == 1 and abs(diff - 0.30) < 1e-9 and abs(spread - math.hypot(0.02, 0.02)) < 1e-9
    assert study.compare([0.1, 0.1, 0.1], [0.3, 0.3, 0.3])[0] == -1
    assert abs(study.sd([1.0, 2.0, 3.0]) - 1.0) < 1e-12 and study.sd([5.0]) == 0.0
    assert study.pm([1.0, 3.0]) == '2.000 ± 1.414'


def planted(acc, eff_rank, comp, nola_params=256, q4=None):
    """A minimal study result with planted per-seed numbers, in study.json's layout."""
    rows = lambda xs, p: [{'acc': {'avg': x}, 'trainable_params': p, 'payload_bytes': 4 * p, 'file_bytes': 4 * p + 900}
                          for x in xs]
    mix = {m: rows(xs, p) for (m, xs), p in zip(acc.items(), (10 ** 6, 6144, 6156, 512, nola_params))}
    spec = {m: {'effective_rank_mean': xs} for m, xs in eff_rank.items()}
    nola = {'acc': acc['nola'], 'payload_bytes': [4 * nola_params] * 3, 'file_bytes': [1] * 3, 'trainable_params': nola_params}
    return {'settings': {'R': 12}, 'mixture': mix, 'spectra': {'per_method': spec},
            'skills': {'acc': {**{m: {data.COMPOSITE: xs} for m, xs in comp.items()},
                               'skill1 alone': {data.SKILL1: [0.9] * 3, data.COMPOSITE: comp['TIES']},
                               'skill2 alone': {data.SKILL2: [0.8] * 3, data.COMPOSITE: comp['TIES']}}},
            'compression': {'nola_fp32': nola, 'nola_4bit': dict(nola, acc=q4 or acc['nola']),
                            'lora_r1': {'acc': acc['lora_r1'], 'payload_bytes': [2048] * 3, 'file_bytes': [1] * 3,
                                        'trainable_params': 512}}}


def test_verdicts_are_computed_from_the_numbers():
    hi, mid, lo = [0.80, 0.82, 0.78], [0.50, 0.52, 0.48], [0.20, 0.22, 0.18]
    acc = {'full': mid, 'lora_r12': mid, 'multilora_3x4': hi, 'lora_r1': mid, 'nola': [0.51, 0.49, 0.50]}
    eff = {'full': [30.0] * 3, 'lora_r12': [4.0, 4.1, 3.9], 'multilora_3x4': [10.0, 10.2, 9.8], 'lora_r1': [1.0] * 3, 'nola': [7.0] * 3}
    comp = {'CAT': hi, 'ΔW averaging': lo, 'TIES': mid, 'data mixing': mid}
    v = {r['paper']: r for r in study.verdicts(planted(acc, eff, comp))}
    assert all(r['agrees'] for r in v.values()), {p: r['verdict'] for p, r in v.items()}
    assert 'TIES' in v['CAT']['finding']  # compared against the better of the two merges
    # reversed numbers -> disagreement, and equal-within-spread numbers -> "no difference"
    acc2 = dict(acc, lora_r12=lo, multilora_3x4=[0.19, 0.23, 0.18], nola=lo)
    comp2 = dict(comp, CAT=[0.51, 0.49, 0.50])
    v2 = {r['paper']: r for r in study.verdicts(planted(acc2, dict(eff, multilora_3x4=[4.0, 4.2, 3.8]), comp2))}
    assert not any(r['agrees'] for r in v2.values())
    assert v2['LoRA']['verdict'].startswith('disagrees') and 'no difference' in v2['MultiLoRA']['finding']
    assert v2['MultiLoRA']['verdict'].startswith('does not reproduce') and v2['CAT']['verdict'] == 'does not reproduce'
    zero = [0.0, 0.0, 0.0]
    v4 = {r['paper']: r for r in study.verdicts(planted(acc, eff, {m: zero for m in comp}))}
    assert v4['CAT']['verdict'].startswith('inconclusive') and 'shift 0.' in v4['CAT']['finding']
    assert 'NOLA below LoRA r=1' in v2['NOLA']['verdict']
    # NOLA's premise: fewer trainable numbers than LoRA rank 1
    v3 = {r['paper']: r for r in study.verdicts(planted(acc, eff, comp, nola_params=4096))}
    assert 'no fewer trainable' in v3['NOLA']['verdict']


def test_check_refuses_a_stage_without_finite_numbers():
    res = {s: {'x': 1.0} for s in ('base', 'mixture', 'spectra', 'skills', 'compression', 'verdicts')}
    study.check(res)
    with pytest.raises(RuntimeError, match='stage spectra produced non-finite numbers at spectra.y'):
        study.check(dict(res, spectra={'y': [float('nan')]}))
    with pytest.raises(RuntimeError, match='stage skills produced no numbers'):
        study.check(dict(res, skills={}))
