"""
The small-scale study: do the seed papers' claims hold on the offline world, on a CPU?

    python study.py             # the whole study, about 30 min on 2 CPU cores -> results/
    python study.py --quick     # every stage on tiny budgets (about 2 min): the CI smoke test
    python study.py --fresh     # retrain everything instead of reusing finished runs

Five stages, each feeding the next (methods: docs/methods.md; data: data.py's docstring):
 1. base        pretrain the default base (python train.py), or reuse out/base/ckpt.pt when its
                config and data fingerprint are those of today's defaults
 2. mixture     the 12-task mixture (MultiLoRA's setting): full fine-tuning, LoRA rank R, MultiLoRA
                3 x rank R/3, LoRA rank 1, NOLA with fewer trainable numbers than LoRA rank 1
 3. spectra     analyze.py on the stage-2 updates: effective rank, top-σ share, intruders, figure
 4. skills      LoRA Soups' setting: one LoRA per skill, CAT on the small composite split, and the
                baselines data mixing, ΔW averaging, TIES, each skill LoRA alone
 5. compression NOLA with 4-bit coefficients vs full precision, bytes vs LoRA rank 1
Every training run goes through train.main with a config from config/, and is repeated over seeds
(init and batch order; the world itself stays the same). Verdicts compare paired differences (same
seeds, same test items) through a bootstrap CI, against an equivalence margin, above the floor of
always answering a task's most common training answer, and only where the gates (runs that have
learned) hold; otherwise they say "inconclusive" and why. results/STUDY.md is written from the
numbers in results/study.json, verdicts included: nothing in it is typed by hand.
"""
import argparse
import collections
import contextlib
import io
import json
import math
import os
import sys
import time

import numpy as np
import torch

import adapters
import analyze
import baselines
import data
import train
from model import load_model, read_checkpoint

WORLD_SEED = 1337  # the synthetic world every run trains and is evaluated on (data.get_dataset's seed)

# budgets: FULL fits 30 min on 2 CPU cores from a fresh clone (measured, see results/STUDY.md)
FULL = dict(seeds=[0, 1, 2], base_dir='out/base', base_args=[], mix_iters=150, skill_iters=300, cat_iters=60,
            eval_items=100, eval_iters=10, out='out/study', results='results', R=12)
QUICK = dict(seeds=[0], base_dir='out/study-quick/base',
             base_args=['--n_layer=2', '--n_head=2', '--n_embd=64', '--max_iters=40', '--eval_interval=40',
                        '--eval_iters=2', '--batch_size=16', '--warmup_iters=4'],
             mix_iters=8, skill_iters=8, cat_iters=4, eval_items=4, eval_iters=2,
             out='out/study-quick', results='out/study-quick/results', R=12)

# stage 2: (name, config, extra options); R is LoRA's rank, MultiLoRA gets n = 3 modules of rank R/3
MIXTURE = lambda R: [
    ('full', 'config/finetune_mixture.py', []),
    (f'lora_r{R}', 'config/lora_mixture.py', [f'--lora_r={R}', f'--lora_alpha={2.0 * R}']),
    (f'multilora_3x{R // 3}', 'config/multilora_mixture.py', ['--multilora_n=3', f'--multilora_r={R // 3}',
                                                             f'--multilora_alpha={2.0 * (R // 3)}']),
    ('lora_r1', 'config/lora_mixture.py', ['--lora_r=1', '--lora_alpha=2.0']),
    ('nola', 'config/nola_mixture.py', []),
]

# what each seed paper claims, with its published numbers (methods.md); the verdicts are computed
CLAIMS = {
    'LoRA': ("Hu et al. 2021: low-rank updates of W_q, W_v match full fine-tuning "
             "(GPT-2 M, E2E: BLEU 70.4 with 0.35M trainable parameters vs 68.2 for full fine-tuning)"),
    'MultiLoRA': ("Wang et al. 2023: at an equal A/B budget, n parallel gated LoRAs give a flatter "
                  "('more democratic') ΔW spectrum than LoRA, closer to full fine-tuning, and better "
                  "multi-task accuracy (mixture of instruction, understanding and knowledge sets)"),
    'NOLA': ("Koohpayegani et al. 2024: fewer trainable numbers than LoRA rank 1 for the same quality "
             "(GPT-2 L, E2E: NOLA 36,864 parameters BLEU 70.1 vs LoRA r=1 184,320 parameters BLEU 69.9); "
             "4-bit coefficients lose little"),
    'CAT': ("Prabhakar et al. 2024 (LoRA Soups): learnable concatenation of skill LoRAs beats model "
            "merging and data mixing on the composite task (math word problems with code: +43% over "
            "merging, +12% over data mixing on average)"),
}


# ----------------------------------------------------------------------------------------------
# small helpers

def mean(xs):
    return sum(xs) / len(xs)


def sd(xs):
    """Sample standard deviation over seeds (0 for one seed)."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def pm(xs, fmt='{:.3f}'):
    return (fmt + ' ± ' + fmt).format(mean(xs), sd(xs))


# ----------------------------------------------------------------------------------------------
# statistics and gates: what a verdict may claim from a handful of seeds

EQUIV_MARGIN = 0.03   # a "matches" claim needs the whole CI of the paired difference within ±this (exact match)
# A "matches" claim also needs both methods this far above answering every item with the task's most common
# training answer: two methods that both learned nothing agree perfectly, and that agreement says nothing about
# the methods. 0.10 is 10 test items in 100 per task beyond the constant answer, several times the seed-to-seed
# sd of a run that has learned something (0.01-0.02 in results/study.json).
FLOOR_GATE = 0.10
N_BOOT, CI_LEVEL, BOOT_SEED = 2000, 0.95, 0  # paired bootstrap: resamples, coverage, its own fixed RNG seed
# The gates every headline verdict rests on (what "the runs have learned" means here): (key, what, op, threshold)
GATES = [('full_ft', 'mixture: full fine-tuning, avg exact match', '>=', 0.55),
         ('best_adapter', 'mixture: best adapter, avg exact match', '>=', 0.45),
         ('skill1_own', f'composition: skill 1 LoRA on its own task ({data.SKILL1})', '>=', 0.8),
         ('skill2_own', f'composition: skill 2 LoRA on its own task ({data.SKILL2})', '>=', 0.8),
         ('skill1_composite', f'composition: skill 1 LoRA alone on the composite ({data.COMPOSITE})', '<=', 0.05),
         ('skill2_composite', f'composition: skill 2 LoRA alone on the composite ({data.COMPOSITE})', '<=', 0.05),
         ('upper_bound', f'composition: upper-bound LoRA trained on the composite ({data.COMPOSITE})', '>=', 0.8)]
UPPER_BOUND = 'upper bound'  # the key of the upper-bound run in skills.acc, when the study has one


def most_common_answer_baseline(ds_or_items, max_items=None):
    """Exact match of answering every test item with the task's most common train answer (ties: the
    alphabetically first), on the first max_items test items, the ones the study evaluates. ds_or_items:
    an InstructDataset or {task: {'train': [(prompt, answer)], 'test': [...]}}. {task: acc, 'avg': mean}."""
    items = getattr(ds_or_items, 'text', ds_or_items)
    tasks = getattr(ds_or_items, 'tasks', list(items))
    out = {}
    for t in tasks:
        counts = collections.Counter(a for _, a in items[t]['train'])
        if not counts:
            raise ValueError(f'task {t!r} has no train items: no most common answer')
        answer = min(counts, key=lambda a: (-counts[a], a))
        test = items[t]['test'][:max_items]
        out[t] = sum(a == answer for _, a in test) / max(len(test), 1)
    out['avg'] = mean([out[t] for t in tasks])
    return out


def paired_diff_ci(a_rows, b_rows, n_boot=N_BOOT, level=CI_LEVEL, seed=BOOT_SEED):
    """(diff, lo, hi): the mean paired difference a - b and its percentile bootstrap CI.
    a_rows[i] and b_rows[i] are the same seed's numbers: one number, or {unit: number} (units such as
    tasks, the same keys in every row), or {unit: [number per item]} (the same items, in the same order).
    Each resample draws seeds, units and items within a unit independently with replacement (seed and task
    are crossed: both vary), from its own RNG seeded with `seed`: the same numbers always give the same CI."""
    if len(a_rows) != len(b_rows) or not a_rows:
        raise ValueError(f'paired_diff_ci: {len(a_rows)} rows vs {len(b_rows)}: pass one row per seed for each method')
    as_units = lambda r: r if isinstance(r, dict) else {'all': r}
    A, B = [as_units(r) for r in a_rows], [as_units(r) for r in b_rows]
    units = list(A[0])
    if any(set(r) != set(units) for r in A + B):
        raise ValueError('paired_diff_ci: rows name different units (tasks): pair the same tasks in every row')
    d = []  # per unit: (seeds, items) paired differences
    for u in units:
        a = np.array([np.atleast_1d(np.asarray(r[u], dtype=float)) for r in A])
        b = np.array([np.atleast_1d(np.asarray(r[u], dtype=float)) for r in B])
        if a.shape != b.shape:
            raise ValueError(f'paired_diff_ci: unit {u!r} has {a.shape[1]} items in a, {b.shape[1]} in b: pair the same items')
        d.append(a - b)
    diff = float(np.mean([x.mean() for x in d]))
    rng = np.random.default_rng(seed)
    S, U, stats = len(A), len(d), np.empty(n_boot)
    for k in range(n_boot):
        seeds, picked = rng.integers(S, size=S), rng.integers(U, size=U)
        total = 0.0
        for j in picked:
            x = d[j][seeds]
            if x.shape[1] > 1:
                x = x[:, rng.integers(x.shape[1], size=x.shape[1])]
            total += x.mean()
        stats[k] = total / U
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return diff, float(lo), float(hi)


def fmt_ci(ci):
    diff, lo, hi = ci
    return f'paired diff {diff:+.3f}, {CI_LEVEL:.0%} CI [{lo:+.3f}, {hi:+.3f}]'


def direction(ci):
    """'higher' iff the CI of a - b lies above 0, 'lower' iff below, else 'no difference'."""
    _, lo, hi = ci
    return 'higher' if lo > 0 else 'lower' if hi < 0 else 'no difference'


def equivalence(ci, over_baseline, margin=EQUIV_MARGIN, floor=FLOOR_GATE, failed_gates=()):
    """A "matches" claim on a paired CI of a - b: (status, text), status 'matches' (CI inside ±margin),
    'differs' (CI wholly outside it) or 'inconclusive'. over_baseline: {method: mean exact match minus the
    most-common-answer baseline}; below `floor` for either method, or any failed gate, makes it inconclusive."""
    low = [f'{m} only {v:+.3f}' for m, v in over_baseline.items() if v < floor]
    why = ([f'at the floor: {", ".join(low)} over the most-common-answer baseline (needs ≥ +{floor:.2f})'] if low else [])
    why += list(failed_gates)
    if why:
        return 'inconclusive', 'inconclusive (' + '; '.join(why) + ')'
    _, lo, hi = ci
    if -margin < lo and hi < margin:
        return 'matches', f'matches (CI [{lo:+.3f}, {hi:+.3f}] inside ±{margin:.2f})'
    if lo > margin or hi < -margin:
        return 'differs', f'differs (CI [{lo:+.3f}, {hi:+.3f}] outside ±{margin:.2f})'
    return 'inconclusive', f'inconclusive (CI [{lo:+.3f}, {hi:+.3f}] wider than ±{margin:.2f})'


def gates(res):
    """Each gate of GATES with its measured value (None: the study has no such run) and pass (None: not measured)."""
    mix, sk = res['mixture'], res['skills']['acc']
    avg = {m: mean([r['acc']['avg'] for r in rows]) for m, rows in mix.items()}
    best = max((m for m in avg if m != 'full'), key=avg.get, default=None)
    comp = lambda m, t: mean(sk[m][t]) if m in sk and t in sk[m] else None
    measured = {'full_ft': (avg.get('full'), 'full'), 'best_adapter': (avg.get(best), best),
                'skill1_own': (comp('skill1 alone', data.SKILL1), None), 'skill2_own': (comp('skill2 alone', data.SKILL2), None),
                'skill1_composite': (comp('skill1 alone', data.COMPOSITE), None),
                'skill2_composite': (comp('skill2 alone', data.COMPOSITE), None),
                'upper_bound': (comp(UPPER_BOUND, data.COMPOSITE), None)}
    out = []
    for key, what, op, thr in GATES:
        v, who = measured[key]
        ok = None if v is None else (v >= thr if op == '>=' else v <= thr)
        out.append({'key': key, 'gate': what + (f' ({who})' if who and key == 'best_adapter' else ''),
                    'threshold': f'{"≥" if op == ">=" else "≤"} {thr:g}', 'measured': v, 'pass': ok})
    return out


def gate_failures(gate_rows, keys):
    """One line per gate in keys that failed or was not measured (what an inconclusive verdict names)."""
    return [f'gate not measured: {g["gate"]}' if g['pass'] is None else
            f'gate failed: {g["gate"]} {g["measured"]:.3f}, needs {g["threshold"]}'
            for g in gate_rows if g['key'] in keys and not g['pass']]


def format_gates(gate_rows):
    return [f'gate {"not measured" if g["pass"] is None else "pass" if g["pass"] else "FAIL"}: {g["gate"]} '
            f'{g["threshold"]}, measured ' + ('-' if g['measured'] is None else f'{g["measured"]:.3f}')
            for g in gate_rows]


def nbytes(obj):
    """Bytes of torch.save(obj): what the file on disk weighs (container overhead included)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def payload(sd_):
    """Bytes of the tensors alone (a tied tensor counted once, as torch.save stores it)."""
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in sd_.values()}
    return sum(seen.values())


def world_dataset(name):
    """The study's world (WORLD_SEED) as train.py's defaults read it."""
    c = train.parse_args([])
    return data.get_dataset(name, c['block_size'], tokenizer=c['tokenizer'], data_dir=c['data_dir'], seed=WORLD_SEED)


class Study:
    def __init__(self, S, fresh=False, log=print):
        self.S, self.fresh, self.log = argparse.Namespace(**S), fresh, log
        self.base_path = os.path.join(self.S.base_dir, 'ckpt.pt')
        self.seconds = {}
        os.makedirs(self.S.out, exist_ok=True)

    # ---- running train.py ---------------------------------------------------------------------
    def train(self, name, argv):
        """train.main(argv) with its output in <out>/<name>/train.log; reuses a finished run with the
        same arguments over the same base (unless --fresh). Returns train.main's summary."""
        out_dir = os.path.join(self.S.out, name)
        argv = list(argv) + [f'--out_dir={out_dir}', f'--data_seed={WORLD_SEED}']
        key = {'argv': argv, 'base': self.base_fp}
        done = os.path.join(out_dir, 'study_run.json')
        if not self.fresh and os.path.exists(done):
            with open(done) as f:
                rec = json.load(f)
            if rec['key'] == key and os.path.exists(os.path.join(out_dir, 'ckpt.pt')):
                self.log(f'  {name:<22} reused ({rec["summary"]["train_time_s"]:.1f}s when trained)')
                return rec['summary']
        os.makedirs(out_dir, exist_ok=True)
        t0 = time.time()
        with open(os.path.join(out_dir, 'train.log'), 'w') as f, contextlib.redirect_stdout(f):
            summary = train.main(argv + ['--overwrite=True'])  # a stale or --fresh run of the study's own
        summary.pop('losses', None)
        with open(done, 'w') as f:
            json.dump({'key': key, 'summary': summary}, f)
        acc = summary.get('eval', {}).get('avg', {}).get('acc', float('nan'))
        self.log(f'  {name:<22} {time.time() - t0:6.1f}s  val loss {summary["val_loss"]:.3f}  avg acc {acc:.3f}')
        return summary

    def run_config(self, name, config, seed, iters, extra=()):
        S = self.S
        return self.train(name, [config, f'--init_from={self.base_path}', f'--seed={seed}', f'--max_iters={iters}',
                                 f'--warmup_iters={max(1, iters // 10)}', f'--eval_interval={iters}',
                                 f'--eval_iters={S.eval_iters}', f'--log_interval={max(1, iters // 5)}',
                                 f'--eval_max_items={S.eval_items}', *extra])

    def ckpt(self, name):
        return os.path.join(self.S.out, name, 'ckpt.pt')

    # ---- models and evaluation ----------------------------------------------------------------
    def base_model(self):
        return load_model(self.base_path)[0]

    def adapted(self, name):
        model = self.base_model()
        adapters.load_adapter_checkpoint(self.ckpt(name), model)
        return model

    def evaluate(self, model, ds):
        with adapters.merged(model):  # generation at the base model's cost
            return ds.evaluate(model.eval(), split='test', max_items=self.S.eval_items)

    def dataset(self, name):
        return world_dataset(name)

    # ---- stage 1 --------------------------------------------------------------------------------
    def stage_base(self):
        want = train.parse_args(self.S.base_args + [f'--out_dir={self.S.base_dir}', f'--data_seed={WORLD_SEED}'])
        ds = data.get_dataset(want['dataset'], want['block_size'], tokenizer=want['tokenizer'],
                              data_dir=want['data_dir'], seed=want['data_seed'])
        ignore = {'out_dir', 'device', 'compile', 'log_interval', 'final_eval', 'eval_max_items', 'eval_split'}
        reuse = None
        if os.path.exists(self.base_path) and not self.fresh:
            ck = read_checkpoint(self.base_path)
            old = {**train.DEFAULTS, **ck.get('config', {})}  # keys newer than the checkpoint: their defaults
            same_cfg = all(old[k] == v for k, v in want.items() if k not in ignore
                           and not k.startswith(('lora_', 'multilora_', 'nola_', 'cat_')))  # adapters: not the base
            same_data = ck.get('data', {}).get('fingerprint') == ds.fingerprint
            reuse = same_cfg and same_data and ck.get('iter_num') == want['max_iters'] and 'model' in ck
            summary = {'reused': True, 'iters': ck.get('iter_num'), 'val_loss': ck.get('best_val_loss')}
            self.log(f'  base at {self.base_path}: config {"same" if same_cfg else "differs"}, data fingerprint '
                     f'{"same" if same_data else "differs"} -> {"reused" if reuse else "retrained"}')
        if not reuse:
            os.makedirs(self.S.base_dir, exist_ok=True)
            t0 = time.time()
            with open(os.path.join(self.S.base_dir, 'train.log'), 'w') as f, contextlib.redirect_stdout(f):
                summary = train.main(self.S.base_args + [f'--out_dir={self.S.base_dir}', f'--data_seed={WORLD_SEED}',
                                                         '--overwrite=True'])  # logged above: 'retrained'
            summary.pop('losses', None)
            summary['reused'] = False
            self.log(f'  base pretrained in {time.time() - t0:.1f}s, val loss {summary["val_loss"]:.3f}')
        base = self.base_model()
        self.base_fp = base.fingerprint()
        self.base_shape = {k: getattr(base.config, k) for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size')}
        return {'path': self.base_path, 'fingerprint': self.base_fp, 'data_fingerprint': ds.fingerprint,
                'model_args': self.base_shape, 'params': sum(p.numel() for p in base.parameters()), **summary}

    # ---- stage 2 --------------------------------------------------------------------------------
    def stage_mixture(self):
        out = {}
        for method, config, extra in MIXTURE(self.S.R):
            rows = []
            for s in self.S.seeds:
                name = f'mix_{method}_s{s}'
                extra_s = list(extra)
                if method == 'nola':  # k + l = d per matrix: half of LoRA rank 1's d_in + d_out, at any width
                    half = self.base_shape['n_embd'] // 2
                    extra_s += [f'--nola_seed={s}', f'--nola_k={half}', f'--nola_l={half}']
                summ = self.run_config(name, config, s, self.S.mix_iters, extra_s)
                ck = read_checkpoint(self.ckpt(name))
                state = ck['adapter']['state'] if 'adapter' in ck else ck['model']
                rows.append({'seed': s, 'name': name, 'acc': {t: r['acc'] for t, r in summ['eval'].items()},
                             'correct': {t: r['correct'] for t, r in summ['eval'].items() if 'correct' in r},
                             'val_loss': summ['val_loss'], 'train_time_s': summ['train_time_s'],
                             'trainable_params': summ['trainable_params'], 'file_bytes': nbytes(state),
                             'payload_bytes': payload(state)})
            out[method] = rows
        return out

    # ---- stage 3 --------------------------------------------------------------------------------
    def stage_spectra(self, mix):
        per_seed = []
        for i, s in enumerate(self.S.seeds):
            methods = list(mix)
            paths = [self.ckpt(f'mix_{m}_s{s}') for m in methods]
            result, _, _ = analyze.run(self.base_path, paths, out=os.path.join(self.S.out, f'spectra_s{s}'))
            for m, r in zip(methods, result['runs']):
                r['label'] = m
            if i == 0:  # the figure and its numbers: the first seed, labelled by this study's method names
                os.makedirs(self.S.results, exist_ok=True)
                files = analyze.write_outputs(result, os.path.join(self.S.results, 'spectra'))
                table = analyze.format_table(result)
            per_seed.append({m: r['aggregate'] for m, r in zip(methods, result['runs'])})
        keys = ('effective_rank_mean', 'top_share_mean', 'energy_rank_mean', 'rel_norm_mean')
        summary = {m: {k: [p[m][k] for p in per_seed] for k in keys} for m in per_seed[0]}
        for m in summary:
            summary[m]['intruders_0.5'] = [p[m]['intruders_per_matrix']['0.5'] for p in per_seed]
        return {'per_method': summary, 'figure': files[1], 'table_seed0': table}

    # ---- stage 4 --------------------------------------------------------------------------------
    def stage_skills(self):
        comp = self.dataset('composite')  # evaluates shift, reverse and shift_reverse
        res = {k: [] for k in ('skill1 alone', 'skill2 alone', 'data mixing', 'ΔW averaging', 'TIES', 'CAT')}
        trainable = {}
        for s in self.S.seeds:
            it = self.S.skill_iters
            s1 = self.run_config(f'skill1_s{s}', 'config/lora_skill1.py', s, it)
            self.run_config(f'skill2_s{s}', 'config/lora_skill2.py', s, it)
            mixed = self.run_config(f'skills_mix_s{s}', 'config/lora_skill1.py', s, it, ['--dataset=skills'])
            cat = self.run_config(f'cat_s{s}', 'config/cat_composite.py', s, self.S.cat_iters,
                                  [f'--cat_adapters={self.ckpt(f"skill1_s{s}")},{self.ckpt(f"skill2_s{s}")}'])
            trainable.update({'skill1 alone': s1['trainable_params'], 'skill2 alone': s1['trainable_params'],
                              'data mixing': mixed['trainable_params'], 'ΔW averaging': 0, 'TIES': 0,
                              'CAT': cat['trainable_params']})
            res['CAT'].append(cat['eval'])
            for label, name in (('skill1 alone', f'skill1_s{s}'), ('skill2 alone', f'skill2_s{s}'),
                                ('data mixing', f'skills_mix_s{s}')):
                res[label].append(self.evaluate(self.adapted(name), comp))
            deltas = [baselines.lora_deltas(self.ckpt(f'skill{i}_s{s}')) for i in (1, 2)]
            for label, how in (('ΔW averaging', 'mean'), ('TIES', 'ties')):
                model = baselines.apply_deltas(self.base_model(), baselines.merge_deltas(deltas, how))
                res[label].append(self.evaluate(model, comp))
        base_eval = self.evaluate(self.base_model(), comp)
        tasks = [data.SKILL1, data.SKILL2, data.COMPOSITE]
        return {'tasks': tasks, 'base': {t: base_eval[t]['acc'] for t in tasks}, 'trainable': trainable,
                'acc': {k: {t: [e[t]['acc'] for e in v] for t in tasks} for k, v in res.items()}}

    # ---- stage 5 --------------------------------------------------------------------------------
    def stage_compression(self, mix):
        mixture = self.dataset('mixture')
        q4 = []
        for s in self.S.seeds:
            model = self.adapted(f'mix_nola_s{s}')
            sd_q = baselines.quantize_nola_state(adapters.adapter_state_dict(model))
            fresh = self.base_model()
            adapters.add_adapters(fresh, **adapters.adapter_config(model))
            adapters.load_adapter_state_dict(fresh, baselines.dequantize_nola_state(sd_q, fresh))
            ev = self.evaluate(fresh, mixture)
            q4.append({'seed': s, 'acc': ev['avg']['acc'], 'file_bytes': nbytes(sd_q), 'payload_bytes': payload(sd_q),
                       'acc_tasks': {t: r['acc'] for t, r in ev.items() if t != 'avg'}})
        pick = lambda m, k: [r[k] for r in mix[m]]
        return {'nola_fp32': {'acc': [r['acc']['avg'] for r in mix['nola']], 'file_bytes': pick('nola', 'file_bytes'),
                              'payload_bytes': pick('nola', 'payload_bytes'),
                              'trainable_params': mix['nola'][0]['trainable_params']},
                'nola_4bit': {'acc': [r['acc'] for r in q4], 'acc_tasks': [r['acc_tasks'] for r in q4],
                              'file_bytes': [r['file_bytes'] for r in q4],
                              'payload_bytes': [r['payload_bytes'] for r in q4],
                              'trainable_params': mix['nola'][0]['trainable_params']},
                'lora_r1': {'acc': [r['acc']['avg'] for r in mix['lora_r1']], 'file_bytes': pick('lora_r1', 'file_bytes'),
                            'payload_bytes': pick('lora_r1', 'payload_bytes'),
                            'trainable_params': mix['lora_r1'][0]['trainable_params']}}

    def run(self):
        res, t_all = {'settings': vars(self.S), 'torch_threads': torch.get_num_threads()}, time.time()
        for stage, fn in (('base', self.stage_base), ('mixture', self.stage_mixture),
                          ('spectra', lambda: self.stage_spectra(res['mixture'])), ('skills', self.stage_skills),
                          ('compression', lambda: self.stage_compression(res['mixture']))):
            self.log(f'stage {stage}')
            t0 = time.time()
            res[stage] = fn()
            self.seconds[stage] = time.time() - t0
            self.log(f'stage {stage}: {self.seconds[stage]:.1f}s')
        self.seconds['total'] = time.time() - t_all
        res['seconds'] = self.seconds
        res['baseline'] = most_common_answer_baseline(self.dataset('mixture'), self.S.eval_items)
        res['verdicts'] = verdicts(res)  # and res['gates']
        return res


# ----------------------------------------------------------------------------------------------
# verdicts and the write-up: computed from the numbers only

def mixture_baseline(res):
    """res['baseline'] (the most-common-answer baseline on the study's test items), computed from the world
    when an older study.json has none."""
    if not res.get('baseline'):
        res['baseline'] = most_common_answer_baseline(world_dataset('mixture'), res['settings']['eval_items'])
    return res['baseline']


def by_seed(rows):
    return sorted(rows, key=lambda r: r['seed'])


def task_rows(rows, tasks):
    """One {task: exact match} per seed, in seed order (what paired_diff_ci pairs)."""
    return [{t: r['acc'][t] for t in tasks} for r in by_seed(rows)]


def verdicts(res):
    """One row per seed paper: claim, finding (numbers), verdict. Differences are paired across seeds and
    tasks, with a bootstrap CI: 'better' claims need the CI above 0, 'matches' claims need it inside
    ±EQUIV_MARGIN with both methods off the floor, and a verdict whose gate fails is inconclusive."""
    mix, spec, sk, cp = res['mixture'], res['spectra']['per_method'], res['skills'], res['compression']
    R = res['settings']['R']
    lora, multi = f'lora_r{R}', f'multilora_3x{R // 3}'
    base = mixture_baseline(res)
    G = res['gates'] = gates(res)
    tasks = [t for t in base if t != 'avg']
    for m, rows in mix.items():
        if [r['seed'] for r in by_seed(rows)] != [r['seed'] for r in by_seed(mix['full'])]:
            raise ValueError(f'mixture runs of {m} and full have different seeds: the differences would not be paired')
    avg = lambda m: [r['acc']['avg'] for r in mix[m]]
    over = lambda m: mean(avg(m)) - base['avg']
    ci_tasks = lambda a, b: paired_diff_ci(task_rows(mix[a], tasks), task_rows(mix[b], tasks))
    mixture_gates = gate_failures(G, ('full_ft', 'best_adapter'))
    adapter_gates = gate_failures(G, ('best_adapter',))
    vs = lambda a, b, what: f'{what}: {pm(a)} vs {pm(b)}'

    def gated(verdict, failed, parts):
        """The verdict, or 'inconclusive (gates)' with what this budget measured."""
        if not failed:
            return verdict
        return 'inconclusive (' + '; '.join(failed) + ')' + (f'; at this budget: {parts}' if parts else '')

    out = []
    ci = ci_tasks(lora, 'full')
    status, text = equivalence(ci, {lora: over(lora), 'full': over('full')}, failed_gates=mixture_gates)
    finding = (f'{vs(avg(lora), avg("full"), f"avg exact match, LoRA r={R} vs full fine-tuning")} ({fmt_ci(ci)}); '
               f'minus the baseline {base["avg"]:.3f}: LoRA {over(lora):+.3f}, full {over("full"):+.3f}')
    out.append({'paper': 'LoRA', 'claim': CLAIMS['LoRA'], 'finding': finding, 'ci': ci, 'agrees': status == 'matches',
                'verdict': 'agrees' if status == 'matches' else text if status == 'inconclusive' else
                f'disagrees (LoRA r={R} is {"above" if ci[0] > 0 else "below"} full fine-tuning beyond ±{EQUIV_MARGIN})'})

    e_m, e_l, e_f = (spec[m]['effective_rank_mean'] for m in (multi, lora, 'full'))  # per seed, in seed order
    ci1 = paired_diff_ci(e_m, e_l)
    ci2 = paired_diff_ci([abs(x - f) for x, f in zip(e_l, e_f)], [abs(x - f) for x, f in zip(e_m, e_f)])
    ci3 = ci_tasks(multi, lora)
    t1 = f'{vs(e_m, e_l, f"effective rank of ΔW, MultiLoRA vs LoRA r={R}")} ({fmt_ci(ci1)}: {direction(ci1)})'
    t2 = (f'distance from full FT\'s effective rank {mean(e_f):.2f}, LoRA\'s minus MultiLoRA\'s: {fmt_ci(ci2)} '
          f'({"MultiLoRA closer" if direction(ci2) == "higher" else "LoRA closer" if direction(ci2) == "lower" else "no difference"})')
    t3 = f'{vs(avg(multi), avg(lora), f"avg exact match, MultiLoRA 3x{R // 3} vs LoRA r={R}")} ({fmt_ci(ci3)}: {direction(ci3)})'
    parts = [('flatter spectrum', direction(ci1) == 'higher'), ('closer to full fine-tuning', direction(ci2) == 'higher'),
             ('better accuracy', direction(ci3) == 'higher')]
    measured = ', '.join(f'{p} {"yes" if ok else "no"}' for p, ok in parts)
    held = all(ok for _, ok in parts)
    verdict = ('agrees' if held else 'partly: ' + measured if any(ok for _, ok in parts) else
               'does not reproduce: ' + measured)
    out.append({'paper': 'MultiLoRA', 'claim': CLAIMS['MultiLoRA'], 'finding': '; '.join([t1, t2, t3]),
                'ci': ci3, 'agrees': held and not adapter_gates, 'verdict': gated(verdict, adapter_gates, measured)})

    nola, r1, q4 = cp['nola_fp32'], cp['lora_r1'], cp['nola_4bit']
    ci1 = ci_tasks('nola', 'lora_r1')
    st1, tx1 = equivalence(ci1, {'nola': over('nola'), 'lora_r1': over('lora_r1')}, failed_gates=adapter_gates)
    if q4.get('acc_tasks'):   # per task when the study recorded it, else per seed
        ci2 = paired_diff_ci([{t: a[t] for t in tasks} for a in q4['acc_tasks']], task_rows(mix['nola'], tasks))
    else:
        ci2 = paired_diff_ci(q4['acc'], [r['acc']['avg'] for r in mix['nola']])
    st2, tx2 = equivalence(ci2, {'nola_4bit': mean(q4['acc']) - base['avg'], 'nola': over('nola')},
                           failed_gates=adapter_gates)
    what = f'avg exact match, NOLA ({nola["trainable_params"]:,} trainable) vs LoRA r=1 ({r1["trainable_params"]:,})'
    t1 = (f'{vs(nola["acc"], r1["acc"], what)} '
          f'({fmt_ci(ci1)}: {tx1.split(" (")[0]}); minus the baseline: NOLA {over("nola"):+.3f}, LoRA r=1 {over("lora_r1"):+.3f}')
    t2 = f'{vs(q4["acc"], nola["acc"], "NOLA 4-bit vs full precision")} ({fmt_ci(ci2)}: {tx2.split(" (")[0]})'
    t3 = (f'adapter payload {mean(q4["payload_bytes"]):,.0f} B (4-bit) / {mean(nola["payload_bytes"]):,.0f} B '
          f'(fp32) vs LoRA r=1 {mean(r1["payload_bytes"]):,.0f} B')
    fewer = nola['trainable_params'] < r1['trainable_params']   # the premise of the comparison
    # more quality than LoRA r=1, or 4-bit above full precision, beyond the margin still supports the claim
    below1, below2 = st1 == 'differs' and ci1[2] < 0, st2 == 'differs' and ci2[2] < 0
    bad = [x for x, b in (('NOLA has no fewer trainable numbers', not fewer),
                          (f'NOLA below LoRA r=1 beyond ±{EQUIV_MARGIN}', below1),
                          (f'4-bit loses more than {EQUIV_MARGIN}', below2)) if b]
    unsure = [tx for st, tx in ((st1, tx1), (st2, tx2)) if st == 'inconclusive']
    verdict = ('disagrees: ' + ', '.join(bad) if bad else
               'inconclusive (' + '; '.join(dict.fromkeys(p for u in unsure for p in u[len('inconclusive ('):-1].split('; ')))
               + ')' if unsure else
               'agrees')
    out.append({'paper': 'NOLA', 'claim': CLAIMS['NOLA'], 'finding': '; '.join([t1, t2, t3]), 'ci': ci1,
                'agrees': verdict == 'agrees', 'verdict': verdict})

    comp = lambda m: sk['acc'][m][data.COMPOSITE]
    best_merge = max(('ΔW averaging', 'TIES'), key=lambda m: mean(comp(m)))
    ci1, ci2 = paired_diff_ci(comp('CAT'), comp(best_merge)), paired_diff_ci(comp('CAT'), comp('data mixing'))
    t1 = f'{vs(comp("CAT"), comp(best_merge), f"composite exact match, CAT vs {best_merge} (the better merge)")} ({fmt_ci(ci1)}: {direction(ci1)})'
    t2 = f'{vs(comp("CAT"), comp("data mixing"), "CAT vs data mixing")} ({fmt_ci(ci2)}: {direction(ci2)})'
    own = {t: mean(sk['acc'][f'skill{i} alone'][t]) for i, t in ((1, data.SKILL1), (2, data.SKILL2))}
    t3 = 'each skill LoRA on its own skill: ' + ', '.join(f'{t} {v:.3f}' for t, v in own.items())
    s1, s2 = direction(ci1) == 'higher', direction(ci2) == 'higher'
    measured = f'beats merging {"yes" if s1 else "no"}, beats data mixing {"yes" if s2 else "no"}'
    verdict = ('agrees' if s1 and s2 else 'partly: ' + measured if s1 or s2 else 'does not reproduce: ' + measured)
    comp_gates = gate_failures(G, ('skill1_own', 'skill2_own', 'skill1_composite', 'skill2_composite', 'upper_bound'))
    out.append({'paper': 'CAT', 'claim': CLAIMS['CAT'], 'finding': '; '.join([t1, t2, t3]), 'ci': ci1,
                'agrees': s1 and s2 and not comp_gates, 'verdict': gated(verdict, comp_gates, measured)})
    return out


def write_report(res, path):
    mix, spec, sk, cp = res['mixture'], res['spectra'], res['skills'], res['compression']
    S = res['settings']
    tasks = [t for t in mix[next(iter(mix))][0]['acc'] if t != 'avg']
    fams = {}
    for t in tasks:
        fams.setdefault(data.TASK_FAMILY.get(t, '-'), []).append(t)
    famacc = lambda rows, ts: [mean([r['acc'][t] for t in ts]) for r in rows]
    base = mixture_baseline(res)
    G = res.get('gates') or gates(res)
    b = res['base']
    L = ['# Study results (generated by `python study.py`; do not edit by hand)', '',
         f"Base: {b['model_args']}, fingerprint {b['fingerprint']}, {'reused' if b.get('reused') else 'pretrained'} "
         f"({b.get('iters')} iterations, val loss {b['val_loss']:.3f}). Seeds {S['seeds']} (init and batch order; the "
         f"world is fixed). Exact match on up to {S['eval_items']} test items per task. Mixture runs "
         f"{S['mix_iters']} iterations, skill LoRAs {S['skill_iters']}, CAT {S['cat_iters']}. mean ± sd over seeds.", '',
         f"Baseline: answering every test item with its task's most common training answer (exact match "
         f"{base['avg']:.3f} on average); 'minus baseline' is a method's exact match minus it. A verdict compares two "
         f"methods by their paired difference (same seeds, same test items) with a {CI_LEVEL:.0%} bootstrap CI "
         f"({N_BOOT:,} resamples, RNG seed {BOOT_SEED}) that resamples seeds x tasks: study.json holds exact match per "
         f"seed and task, not per item, so items are not resampled (spectra and the composite: seeds only). With 3 "
         f"seeds these CIs are rough. 'higher' / 'lower' when the CI excludes 0, else "
         f"no difference. A 'matches' claim needs the CI inside ±{EQUIV_MARGIN} and both methods at least "
         f"+{FLOOR_GATE:.2f} over the baseline, else it is inconclusive (at the floor, or CI too wide). A verdict "
         f"whose gate (below) fails or was not measured is inconclusive and names the gate.", '',
         'Wall time per stage (s): ' + ', '.join(f'{k} {v:.0f}' for k, v in res['seconds'].items()) +
         f" ({res['torch_threads']} torch threads).", '',
         '## Gates', '', 'What the verdicts rest on: runs that have learned (checked on the numbers below).', '',
         '| gate | threshold | measured | pass |', '|---|---|---:|---|']
    for g in G:
        L.append(f"| {g['gate']} | {g['threshold']} | {'-' if g['measured'] is None else format(g['measured'], '.3f')} | "
                 f"{'not measured' if g['pass'] is None else 'pass' if g['pass'] else '**fail**'} |")
    L += ['', '## 1. Multi-task mixture (12 tasks, 3 families)', '',
          '| method | trainable | adapter bytes | avg exact match | minus baseline | ' + ' | '.join(fams) +
          ' | val loss | train s |', '|---|---:|---:|---:|---:|' + '---:|' * len(fams) + '---:|---:|',
          '| most common answer (baseline) | 0 | 0 | ' + f"{base['avg']:.3f} | +0.000 | " +
          ' | '.join(f"{mean([base[t] for t in ts]):.3f}" for ts in fams.values()) + ' | - | - |']
    for m, rows in mix.items():
        L.append(f"| {m} | {rows[0]['trainable_params']:,} | {rows[0]['payload_bytes']:,} | "
                 f"{pm([r['acc']['avg'] for r in rows])} | {mean([r['acc']['avg'] for r in rows]) - base['avg']:+.3f} | " +
                 ' | '.join(pm(famacc(rows, ts)) for ts in fams.values()) +
                 f" | {pm([r['val_loss'] for r in rows])} | {pm([r['train_time_s'] for r in rows], '{:.1f}')} |")
    L += ['', 'Exact match minus the baseline, per family (mean over seeds):', '',
          '| method | average | ' + ' | '.join(fams) + ' |', '|---|---:|' + '---:|' * len(fams)]
    for m, rows in mix.items():
        L.append(f"| {m} | {mean([r['acc']['avg'] for r in rows]) - base['avg']:+.3f} | " + ' | '.join(
            f"{mean(famacc(rows, ts)) - mean([base[t] for t in ts]):+.3f}" for ts in fams.values()) + ' |')
    L += ['', 'adapter bytes: the tensors of the adapter state (full fine-tuning: the whole model).', '',
          'Per task (mean over seeds):', '', '| task | family | baseline | ' + ' | '.join(mix) + ' |',
          '|---|---|---:|' + '---:|' * len(mix)]
    for t in tasks:
        L.append(f"| {t} | {data.TASK_FAMILY.get(t, '-')} | {base[t]:.3f} | " + ' | '.join(f"{mean([r['acc'][t] for r in rows]):.3f}"
                                                                        for rows in mix.values()) + ' |')
    L += ['', '## 2. Spectra of ΔW (W_q, W_v; analyze.py)', '', f"![spectra]({os.path.basename(spec['figure'])})", '',
          '| method | effective rank exp(H) | top σ² share | rank for 90% energy | ‖ΔW‖/‖W0‖ | intruders/matrix (ε=0.5) |',
          '|---|---:|---:|---:|---:|---:|']
    for m, d in spec['per_method'].items():
        L.append(f"| {m} | {pm(d['effective_rank_mean'], '{:.2f}')} | {pm(d['top_share_mean'])} | "
                 f"{pm(d['energy_rank_mean'], '{:.1f}')} | {pm(d['rel_norm_mean'], '{:.4f}')} | {pm(d['intruders_0.5'], '{:.2f}')} |")
    L += ['', 'First seed, as analyze.py prints it:', '', '```', spec['table_seed0'], '```', '',
          '## 3. Skill composition (LoRA Soups setting)', '',
          '| method | trainable | ' + ' | '.join(f'{t} exact match' for t in sk['tasks']) + ' |',
          '|---|---:|' + '---:|' * len(sk['tasks']),
          '| base (no adapter) | 0 | ' + ' | '.join(f"{sk['base'][t]:.3f}" for t in sk['tasks']) + ' |']
    for m, d in sk['acc'].items():
        L.append(f"| {m} | {sk['trainable'][m]:,} | " + ' | '.join(pm(d[t]) for t in sk['tasks']) + ' |')
    L += ['', f"{data.SKILL1} = skill 1, {data.SKILL2} = skill 2, {data.COMPOSITE} = the composite; ΔW averaging and "
          'TIES merge the two skill LoRAs into W0 (baselines.merge_deltas / apply_deltas).', '',
          '## 4. NOLA compression', '', '| adapter | trainable | payload bytes | file bytes (torch.save) | avg exact match |',
          '|---|---:|---:|---:|---:|']
    for m, d in cp.items():
        L.append(f"| {m} | {d['trainable_params']:,} | {mean(d['payload_bytes']):,.0f} | {mean(d['file_bytes']):,.0f} | {pm(d['acc'])} |")
    L += ['', '## 5. The seed papers: claim, finding, verdict', '', '| paper | claim (published numbers) | this study | verdict |',
          '|---|---|---|---|']
    for v in res['verdicts']:
        L.append(f"| {v['paper']} | {v['claim']} | {v['finding']} | **{v['verdict']}** |")
    L += ['', f"Scale: a {b['model_args']['n_layer']}-layer, {b['params'] / 1e6:.1f}M-parameter model (d = "
          f"{b['model_args']['n_embd']}) on a synthetic world, {S['mix_iters']} iterations of CPU fine-tuning, exact match "
          'instead of BLEU; the papers used GPT-2 M/L and LLaMA on real data. A verdict here says what happens at '
          'this scale, not whether the paper is right.', '']
    with open(path + '.tmp', 'w') as f:
        f.write('\n'.join(L))
    os.replace(path + '.tmp', path)


def check(res):
    """The smoke test's assertion: every stage produced finite numbers (not what they are)."""
    def walk(x, where):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from walk(v, f'{where}.{k}')
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                yield from walk(v, f'{where}[{i}]')
        elif isinstance(x, float) and not math.isfinite(x):
            yield where
    for stage in ('base', 'mixture', 'spectra', 'skills', 'compression', 'baseline', 'gates', 'verdicts'):
        if not res.get(stage):
            raise RuntimeError(f'stage {stage} produced no numbers')
        bad = list(walk(res[stage], stage))
        if bad:
            raise RuntimeError(f'stage {stage} produced non-finite numbers at {bad[0]} ({len(bad)} in all)')


def main(argv=None):
    p = argparse.ArgumentParser(description='The small-scale study of LoRA, MultiLoRA, NOLA and CAT.')
    p.add_argument('--quick', action='store_true', help='tiny budgets, every stage (CI smoke test, ~2 min)')
    p.add_argument('--fresh', action='store_true', help='retrain every run instead of reusing finished ones')
    p.add_argument('--out', help='where runs go (default out/study, or out/study-quick with --quick)')
    p.add_argument('--results', help='where STUDY.md, study.json and the figure go (default results/)')
    p.add_argument('--report', action='store_true', help='only rewrite STUDY.md (verdicts recomputed) from study.json')
    a = p.parse_args(argv)
    if a.report:
        path = os.path.join(a.results or FULL['results'], 'study.json')
        if not os.path.exists(path):
            raise FileNotFoundError(f'{path} not found: run python study.py first')
        with open(path) as f:
            res = json.load(f)
        res['verdicts'] = verdicts(res)  # and res['gates'], res['baseline'] when study.json has none
        with open(path + '.tmp', 'w') as f:
            json.dump(res, f, indent=1)
        os.replace(path + '.tmp', path)
        write_report(res, os.path.join(os.path.dirname(path), 'STUDY.md'))
        print(f'rewrote {os.path.dirname(path)}/STUDY.md from {path}')
        print_outcome(res)
        return res
    S = dict(QUICK if a.quick else FULL)
    if a.out:
        S['out'] = a.out
        if a.quick:
            S['base_dir'] = os.path.join(a.out, 'base')
    if a.results:
        S['results'] = a.results
    t0 = time.time()
    res = Study(S, fresh=a.fresh, log=lambda s: print(f'[{time.time() - t0:6.0f}s] {s}', flush=True)).run()
    check(res)
    os.makedirs(S['results'], exist_ok=True)
    with open(os.path.join(S['results'], 'study.json'), 'w') as f:
        json.dump(res, f, indent=1)
    write_report(res, os.path.join(S['results'], 'STUDY.md'))
    print(f"wrote {S['results']}/STUDY.md, study.json, {os.path.basename(res['spectra']['figure'])} "
          f"in {res['seconds']['total']:.0f}s")
    print_outcome(res)
    return res


def print_outcome(res):
    for line in format_gates(res['gates']):
        print(line)
    for v in res['verdicts']:
        print(f"{v['paper']:<10} {v['verdict']}")


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
