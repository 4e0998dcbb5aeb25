"""
The statistics, gates, verdicts and write-up of the study (study.py runs it): everything here is computed
from the numbers in results/study.json, so `python -m study --report` re-renders results/STUDY.md
without training anything.

A verdict compares two methods by the paired difference of their exact match (same seeds, same test
items) with a bootstrap CI that resamples seeds, tasks and items. "better" needs the CI above 0; a
"matches" claim needs the CI inside ±EQUIV_MARGIN and both methods at least FLOOR_GATE over the
most-common-answer baseline (two methods that learned nothing agree perfectly, and say nothing). A
verdict whose gate (a run that must have learned, GATES) fails or was not measured is "inconclusive"
and names the gate.
"""

import collections
import math
import os

import numpy as np

from sources.world import TASK_FAMILY

EQUIV_MARGIN = (
    0.03  # a "matches" claim needs the whole CI of the paired difference within ±this (exact match)
)
# A "matches" claim also needs both methods this far above answering every item with the task's most common
# training answer: 0.10 is 20 test items in 200 per task beyond the constant answer.
FLOOR_GATE = 0.10
# paired bootstrap: resamples, coverage, its own fixed RNG seed
N_BOOT, CI_LEVEL, BOOT_SEED = (
    2000,
    0.95,
    0,
)
# The gates every headline verdict rests on (what "the runs have learned" means here): (key, what, op, threshold)
# fmt: off
GATES = [
    ('base_recall', "base: fact recall in the corpus's own wording ('p lives in' -> city)", '>=', 0.7),
    ('full_ft', 'mixture: full fine-tuning, avg exact match', '>=', 0.55),
    ('best_adapter', 'mixture: best adapter, avg exact match', '>=', 0.45),
    ('skill_a_own', "composition: skill A (LoRA read the manual) recalls the manual's facts", '>=', 0.8),
    ('skill_b_own', 'composition: skill B (Q/A LoRA on known people) on its own test (known_qa)', '>=', 0.8),
    ('skill_a_composite', 'composition: skill A alone on the composite (manual_qa)', '<=', 0.05),
    ('skill_b_composite', 'composition: skill B alone on the composite (manual_qa)', '<=', 0.05),
    ('upper_bound', 'composition: upper-bound LoRA (manual + ample composite Q/A) on the composite', '>=', 0.8),
    ('control_skill1', 'control: the shift skill alone on its own test', '>=', 0.8),
    ('control_skill2', 'control: the reverse skill alone on its own test', '>=', 0.8),
]
# fmt: on
UPPER_BOUND = 'upper bound'  # the key of the upper-bound run in composition['runs']

# what each seed paper claims, with its published numbers (docs/methods.md); the verdicts are computed
CLAIMS = {
    'LoRA': (
        "Hu et al. 2021: low-rank updates of W_q, W_v match full fine-tuning "
        "(GPT-2 M, E2E: BLEU 70.4 with 0.35M trainable parameters vs 68.2 for full fine-tuning)"
    ),
    'MultiLoRA': (
        "Wang et al. 2023: at an equal A/B budget, n parallel gated LoRAs give a flatter "
        "('more democratic') ΔW spectrum than LoRA, closer to full fine-tuning, and better "
        "multi-task accuracy (mixture of instruction, understanding and knowledge sets)"
    ),
    'NOLA': (
        "Koohpayegani et al. 2024: fewer trainable numbers than LoRA rank 1 for the same quality "
        "(GPT-2 L, E2E: NOLA 36,864 parameters BLEU 70.1 vs LoRA r=1 184,320 parameters BLEU 69.9); "
        "4-bit coefficients lose little"
    ),
    'CAT': (
        "Prabhakar et al. 2024 (LoRA Soups): learnable concatenation of skill LoRAs beats model "
        "merging and data mixing on the composite task (math word problems with code: +43% over "
        "merging, +12% over data mixing on average; a Q/A bot on proprietary manuals as the practical case)"
    ),
}


# ----------------------------------------------------------------------------------------------
# small helpers and statistics


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
        raise ValueError(
            f'paired_diff_ci: {len(a_rows)} rows vs {len(b_rows)}: pass one row per seed for each method'
        )
    as_units = lambda r: r if isinstance(r, dict) else {'all': r}
    A, B = [as_units(r) for r in a_rows], [as_units(r) for r in b_rows]
    units = list(A[0])
    if any(set(r) != set(units) for r in A + B):
        raise ValueError(
            'paired_diff_ci: rows name different units (tasks): pair the same tasks in every row'
        )
    d = []  # per unit: (seeds, items) paired differences
    for u in units:
        a = np.array([np.atleast_1d(np.asarray(r[u], dtype=float)) for r in A])
        b = np.array([np.atleast_1d(np.asarray(r[u], dtype=float)) for r in B])
        if a.shape != b.shape:
            raise ValueError(
                f'paired_diff_ci: unit {u!r} has {a.shape[1]} items in a, {b.shape[1]} in b: pair the same items'
            )
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
    why = (
        [
            f'at the floor: {", ".join(low)} over the most-common-answer baseline (needs ≥ +{floor:.2f})'
        ]
        if low
        else []
    )
    why += list(failed_gates)
    if why:
        return 'inconclusive', 'inconclusive (' + '; '.join(why) + ')'
    _, lo, hi = ci
    if -margin < lo and hi < margin:
        return 'matches', f'matches (CI [{lo:+.3f}, {hi:+.3f}] inside ±{margin:.2f})'
    if lo > margin or hi < -margin:
        return 'differs', f'differs (CI [{lo:+.3f}, {hi:+.3f}] outside ±{margin:.2f})'
    return 'inconclusive', f'inconclusive (CI [{lo:+.3f}, {hi:+.3f}] wider than ±{margin:.2f})'


def gate_failures(gate_rows, keys):
    """One line per gate in keys that failed or was not measured (what an inconclusive verdict names)."""
    return [
        f'gate not measured: {g["gate"]}'
        if g['pass'] is None
        else f'gate failed: {g["gate"]} {g["measured"]:.3f}, needs {g["threshold"]}'
        for g in gate_rows
        if g['key'] in keys and not g['pass']
    ]


def format_gates(gate_rows):
    return [
        f'gate {"not measured" if g["pass"] is None else "pass" if g["pass"] else "FAIL"}: {g["gate"]} '
        f'{g["threshold"]}, measured ' + ('-' if g['measured'] is None else f'{g["measured"]:.3f}')
        for g in gate_rows
    ]


def gates(res):
    """Each gate of GATES with its measured value (None: the study has no such run) and pass (None: not measured)."""
    mix, comp = res.get('mixture', {}), res.get('composition', {}).get('runs', {})
    avg = {m: mean([r['acc']['avg'] for r in rows]) for m, rows in mix.items()}
    best = max((m for m in avg if m != 'full'), key=avg.get, default=None)
    c = lambda label, k: mean([r[k] for r in comp[label]]) if comp.get(label) else None
    ctl = res.get('control', {}).get('acc', {})
    skill1, skill2 = (res.get('control', {}).get('tasks') or [None, None])[:2]
    measured = {
        'base_recall': (res.get('base', {}).get('recall', {}).get('all'), None),
        'full_ft': (avg.get('full'), None),
        'best_adapter': (avg.get(best), best),
        'skill_a_own': (c('skill A alone', 'recall'), None),
        'skill_b_own': (c('skill B alone', 'known_qa'), None),
        'skill_a_composite': (c('skill A alone', 'manual_qa'), None),
        'skill_b_composite': (c('skill B alone', 'manual_qa'), None),
        'upper_bound': (c(UPPER_BOUND, 'manual_qa'), None),
        'control_skill1': (ctl.get('skill1 alone', {}).get(skill1), None),
        'control_skill2': (ctl.get('skill2 alone', {}).get(skill2), None),
    }
    out = []
    for key, what, op, thr in GATES:
        v, who = measured[key]
        ok = None if v is None else (v >= thr if op == '>=' else v <= thr)
        out.append(
            {
                'key': key,
                'gate': what + (f' ({who})' if who else ''),
                'threshold': f'{"≥" if op == ">=" else "≤"} {thr:g}',
                'measured': v,
                'pass': ok,
            }
        )
    return out


def by_seed(rows):
    return sorted(rows, key=lambda r: r['seed'])


def item_rows(rows, tasks):
    """One {task: [exact match per test item]} per seed, in seed order (what paired_diff_ci pairs)."""
    return [{t: r['correct'][t] for t in tasks} for r in by_seed(rows)]


def gated(verdict, failed, measured=''):
    """The verdict, or 'inconclusive (gates)' with what this budget measured."""
    if not failed:
        return verdict
    return (
        'inconclusive ('
        + '; '.join(failed)
        + ')'
        + (f'; as measured: {measured}' if measured else '')
    )


def verdicts(res):
    """One row per seed paper: claim, finding (numbers), verdict."""
    mix, base, R = res['mixture'], res['baseline'], res['settings']['R']
    lora_qv, lora, multi = f'lora_qv_r{R}', f'lora_r{R}', f'multilora_3x{R // 3}'
    G = res['gates'] = gates(res)
    tasks = [t for t in base if t != 'avg']
    for m, rows in mix.items():
        if [r['seed'] for r in by_seed(rows)] != [r['seed'] for r in by_seed(mix['full'])]:
            raise ValueError(
                f'mixture runs of {m} and full have different seeds: the differences would not be paired'
            )
    avg = lambda m: [r['acc']['avg'] for r in mix[m]]
    over = lambda m: mean(avg(m)) - base['avg']
    ci_items = lambda a, b: paired_diff_ci(item_rows(mix[a], tasks), item_rows(mix[b], tasks))
    base_gate = gate_failures(G, ('base_recall',))
    mixture_gates = base_gate + gate_failures(G, ('full_ft', 'best_adapter'))
    adapter_gates = base_gate + gate_failures(G, ('best_adapter',))
    vs = lambda a, b, what: f'{what}: {pm(a)} vs {pm(b)}'
    out = []

    def matches(a, b, label):
        ci = ci_items(a, b)
        st, tx = equivalence(ci, {a: over(a), b: over(b)}, failed_gates=mixture_gates)
        text = (
            f'{vs(avg(a), avg(b), f"avg exact match, {label} vs full fine-tuning")} ({fmt_ci(ci)}: '
            f'{tx.split(" (")[0]}); minus the baseline {base["avg"]:.3f}: {over(a):+.3f} vs {over(b):+.3f}'
        )
        return ci, st, tx, text

    ci, st, tx, t1 = matches(lora_qv, 'full', f'LoRA r={R} on W_q,W_v')
    _, st2, _, t2 = matches(lora, 'full', f'LoRA r={R} on all Linears')
    verdict = (
        'agrees'
        if st == 'matches'
        else tx
        if st == 'inconclusive'
        else f'disagrees (LoRA r={R} on W_q,W_v is {"above" if ci[0] > 0 else "below"} full fine-tuning beyond '
        f'±{EQUIV_MARGIN}; on all Linears: {st2})'
    )
    out.append(
        {
            'paper': 'LoRA',
            'claim': CLAIMS['LoRA'],
            'finding': '; '.join([t1, t2]),
            'ci': ci,
            'agrees': st == 'matches',
            'verdict': verdict,
        }
    )

    spec = res['spectra']['per_method']
    # per seed, in seed order
    e_m, e_l, e_f = (spec[m]['effective_rank_mean'] for m in (multi, lora, 'full'))
    ci1 = paired_diff_ci(e_m, e_l)
    ci2 = paired_diff_ci(
        [abs(x - f) for x, f in zip(e_l, e_f)], [abs(x - f) for x, f in zip(e_m, e_f)]
    )
    ci3 = ci_items(multi, lora)
    t1 = f'{vs(e_m, e_l, f"effective rank of ΔW, MultiLoRA vs LoRA r={R}")} ({fmt_ci(ci1)}: {direction(ci1)})'
    t2 = (
        f'distance from full FT\'s effective rank {mean(e_f):.2f}, LoRA\'s minus MultiLoRA\'s: {fmt_ci(ci2)} '
        f'({"MultiLoRA closer" if direction(ci2) == "higher" else "LoRA closer" if direction(ci2) == "lower" else "no difference"})'
    )
    t3 = f'{vs(avg(multi), avg(lora), f"avg exact match, MultiLoRA 3x{R // 3} vs LoRA r={R}")} ({fmt_ci(ci3)}: {direction(ci3)})'
    parts = [
        ('flatter spectrum', direction(ci1) == 'higher'),
        ('closer to full fine-tuning', direction(ci2) == 'higher'),
        ('better accuracy', direction(ci3) == 'higher'),
    ]
    measured = ', '.join(f'{p} {"yes" if ok else "no"}' for p, ok in parts)
    held = all(ok for _, ok in parts)
    verdict = (
        'agrees'
        if held
        else 'partly: ' + measured
        if any(ok for _, ok in parts)
        else 'does not reproduce: ' + measured
    )
    out.append(
        {
            'paper': 'MultiLoRA',
            'claim': CLAIMS['MultiLoRA'],
            'finding': '; '.join([t1, t2, t3]),
            'ci': ci3,
            'agrees': held and not adapter_gates,
            'verdict': gated(verdict, adapter_gates, measured),
        }
    )

    cp = res['compression']
    nola, r1, q4 = cp['nola_fp32'], cp['lora_r1'], cp['nola_4bit']
    ci1 = ci_items('nola', 'lora_r1')
    st1, tx1 = equivalence(
        ci1, {'nola': over('nola'), 'lora_r1': over('lora_r1')}, failed_gates=adapter_gates
    )
    ci2 = paired_diff_ci(item_rows(q4['rows'], tasks), item_rows(mix['nola'], tasks))
    st2, tx2 = equivalence(
        ci2,
        {'nola_4bit': mean(q4['acc']) - base['avg'], 'nola': over('nola')},
        failed_gates=adapter_gates,
    )
    what = f'avg exact match, NOLA ({nola["trainable_params"]:,} trainable) vs LoRA r=1 ({r1["trainable_params"]:,})'
    t1 = (
        f'{vs(nola["acc"], r1["acc"], what)} ({fmt_ci(ci1)}: {tx1.split(" (")[0]}); minus the baseline: '
        f'NOLA {over("nola"):+.3f}, LoRA r=1 {over("lora_r1"):+.3f}'
    )
    t2 = f'{vs(q4["acc"], nola["acc"], "NOLA 4-bit vs full precision")} ({fmt_ci(ci2)}: {tx2.split(" (")[0]})'
    t3 = (
        f'adapter payload {mean(q4["payload_bytes"]):,.0f} B (4-bit) / {mean(nola["payload_bytes"]):,.0f} B '
        f'(fp32) vs LoRA r=1 {mean(r1["payload_bytes"]):,.0f} B'
    )
    fewer = nola['trainable_params'] < r1['trainable_params']  # the premise of the comparison
    below1, below2 = st1 == 'differs' and ci1[2] < 0, st2 == 'differs' and ci2[2] < 0
    bad = [
        x
        for x, b in (
            ('NOLA has no fewer trainable numbers', not fewer),
            (f'NOLA below LoRA r=1 beyond ±{EQUIV_MARGIN}', below1),
            (f'4-bit loses more than {EQUIV_MARGIN}', below2),
        )
        if b
    ]
    unsure = [tx for st, tx in ((st1, tx1), (st2, tx2)) if st == 'inconclusive']
    verdict = (
        'disagrees: ' + ', '.join(bad)
        if bad
        else 'inconclusive ('
        + '; '.join(
            dict.fromkeys(p for u in unsure for p in u[len('inconclusive (') : -1].split('; '))
        )
        + ')'
        if unsure
        else 'agrees'
    )
    out.append(
        {
            'paper': 'NOLA',
            'claim': CLAIMS['NOLA'],
            'finding': '; '.join([t1, t2, t3]),
            'ci': ci1,
            'agrees': verdict == 'agrees',
            'verdict': verdict,
        }
    )

    comp = res['composition']['runs']
    em = lambda m: [r['manual_qa'] for r in by_seed(comp[m])]
    pair = lambda a, b: paired_diff_ci(
        [r['correct'] for r in by_seed(comp[a])], [r['correct'] for r in by_seed(comp[b])]
    )
    best_merge = max(('task arithmetic', 'ΔW averaging', 'TIES'), key=lambda m: mean(em(m)))
    best_mix = max(('data mixing', 'data mixing + composite split'), key=lambda m: mean(em(m)))
    cat = max(('CAT', 'CAT (softmax)'), key=lambda m: mean(em(m)))
    ci1, ci2 = pair(cat, best_merge), pair(cat, best_mix)
    t1 = f'{vs(em(cat), em(best_merge), f"composite exact match, {cat} vs {best_merge} (the best merge)")} ({fmt_ci(ci1)}: {direction(ci1)})'
    t2 = f'{vs(em(cat), em(best_mix), f"{cat} vs {best_mix} (the better data mixing)")} ({fmt_ci(ci2)}: {direction(ci2)})'
    t3 = f'upper bound {pm(em(UPPER_BOUND))}; most-common-answer baseline {res["composition"]["baseline"]:.3f}'
    s1, s2 = direction(ci1) == 'higher', direction(ci2) == 'higher'
    measured = f'beats merging {"yes" if s1 else "no"}, beats data mixing {"yes" if s2 else "no"}'
    verdict = (
        'agrees'
        if s1 and s2
        else 'partly: ' + measured
        if s1 or s2
        else 'does not reproduce: ' + measured
    )
    comp_gates = gate_failures(
        G,
        (
            'base_recall',
            'skill_a_own',
            'skill_b_own',
            'skill_a_composite',
            'skill_b_composite',
            'upper_bound',
        ),
    )
    out.append(
        {
            'paper': 'CAT',
            'claim': CLAIMS['CAT'],
            'finding': '; '.join([t1, t2, t3]),
            'ci': ci1,
            'agrees': s1 and s2 and not comp_gates,
            'verdict': gated(verdict, comp_gates, measured),
        }
    )
    return out


def write_report(res, path, sections=()):
    """results/STUDY.md from the numbers alone (nothing typed by hand); sections: lines of the stages written
    outside this file (study/regret.py), after the claims table."""
    path = os.fspath(path)
    mix, spec, cp, comp, ctl = (
        res['mixture'],
        res['spectra'],
        res['compression'],
        res['composition'],
        res['control'],
    )
    S, b, base = res['settings'], res['base'], res['baseline']
    tasks = [t for t in base if t != 'avg']
    fams = {}
    for t in tasks:
        fams.setdefault(TASK_FAMILY.get(t, '-'), []).append(t)
    famacc = lambda rows, ts: [mean([r['acc'][t] for t in ts]) for r in rows]
    G = res.get('gates') or gates(res)
    rc = b['recall']
    L = [
        '# Study results (generated by `python -m study`; do not edit by hand)',
        '',
        f"Base: {b['model_args']}, fingerprint {b['fingerprint']}, {b.get('iters')} iterations of pretraining "
        f"({'reused' if b.get('reused') else 'pretrained'}), val loss {b['val_loss']:.3f}. Fact recall in the corpus's "
        f"own wording: {rc['all']:.3f} ("
        + ', '.join(f'{k} {v:.2f}' for k, v in rc.items() if k not in ('all', 'manual'))
        + f"); the manual's people, never read: {rc['manual']:.3f}.",
        '',
        f"Seeds {S['seeds']} (init and batch order; the world is fixed). Every method trains {S['mix_iters']} iterations "
        f"on the mixture at its own learning rate, chosen on the validation split (seed {S['seeds'][0]}, "
        f"{S['sweep_iters']} iterations); exact match on every test item. mean ± sd over seeds.",
        '',
        f"Baseline: answering every test item with its task's most common training answer (exact match "
        f"{base['avg']:.3f} on average); 'minus baseline' is a method's exact match minus it. A verdict compares two "
        f"methods by their paired difference (same seeds, same test items) with a {CI_LEVEL:.0%} bootstrap CI "
        f"({N_BOOT:,} resamples, RNG seed {BOOT_SEED}) that resamples seeds, tasks and items within a task (spectra: "
        f"seeds only). 'higher' / 'lower' when the CI excludes 0, else no difference. A 'matches' claim needs the CI "
        f"inside ±{EQUIV_MARGIN} and both methods at least +{FLOOR_GATE:.2f} over the baseline, else it is "
        f"inconclusive. A verdict whose gate (below) fails or was not measured is inconclusive and names the gate.",
        '',
        f"Wall time per stage, each as its last invocation measured it (s; the last one trained "
        f"{res.get('trained', '?')} runs and reused the others): "
        + ', '.join(f'{k} {v:.0f}' for k, v in res['seconds'].items())
        + f" (total {sum(res['seconds'].values()):.0f}; {res['torch_threads']} torch threads, "
        f"runs trained {res.get('workers', 1)} at a time, on one thread each).",
        '',
        "Training time of each stage's runs, as their records hold it (s; each measured when it was trained, "
        'at the load of that time): '
        + ', '.join(
            f"{k} {v:.0f} ({n} run{'s' * (n != 1)})"
            for k, v in res['train_seconds'].items()
            if (n := res['runs_per_stage'][k])
        )
        + f" (total {sum(res['train_seconds'].values()):.0f})."
        if 'train_seconds' in res
        else '',
        '',
        '## Gates',
        '',
        'What the verdicts rest on: runs that have learned (checked on the numbers below).',
        '',
        '| gate | threshold | measured | pass |',
        '|---|---|---:|---|',
    ]
    for g in G:
        L.append(
            f"| {g['gate']} | {g['threshold']} | {'-' if g['measured'] is None else format(g['measured'], '.3f')} | "
            f"{'not measured' if g['pass'] is None else 'pass' if g['pass'] else '**fail**'} |"
        )
    L += [
        '',
        '## 1. Learning rates (validation split, avg exact match)',
        '',
        '| method | '
        + ' | '.join(f'lr {i + 1}' for i in range(max(len(v['grid']) for v in res['lr'].values())))
        + ' | chosen |',
        '|---|' + '---:|' * (max(len(v['grid']) for v in res['lr'].values()) + 1),
    ]
    for m, v in res['lr'].items():
        cells = [f"{lr:g}: {a:.3f}" for lr, a in zip(v['grid'], v['val_acc'])]
        cells += ['-'] * (max(len(w['grid']) for w in res['lr'].values()) - len(cells))
        edge = len(v['grid']) > 1 and v['chosen'] in (v['grid'][0], v['grid'][-1])
        L.append(
            f"| {m} | "
            + ' | '.join(cells)
            + f" | **{v['chosen']:g}**{' (edge of the grid)' if edge else ''} |"
        )
    widen = S.get('lr_widen', 0)
    L += [
        '',
        (
            f"Each grid widens one step of the 1-3-10 ladder past the edge its best rate sits on, at most {widen} "
            f"times; a"
            if widen
            else 'A'
        )
        + " rate still at the edge says the best rate may lie beyond it: that "
        "method may be under-tuned here.",
        '',
        '## 2. Multi-task mixture (12 tasks, 3 families)',
        '',
        'lora_qv: W_q and W_v (the papers\' GPT-2 setting); every other adapter: all six Linears of each block.',
        '',
        '| method | lr | trainable | adapter bytes | avg exact match | minus baseline | '
        + ' | '.join(fams)
        + ' | val loss | train s |',
        '|---|---:|---:|---:|---:|---:|' + '---:|' * len(fams) + '---:|---:|',
        '| most common answer (baseline) | - | 0 | 0 | '
        + f"{base['avg']:.3f} | +0.000 | "
        + ' | '.join(f"{mean([base[t] for t in ts]):.3f}" for ts in fams.values())
        + ' | - | - |',
    ]
    for m, rows in mix.items():
        L.append(
            f"| {m} | {rows[0]['lr']:g} | {rows[0]['trainable_params']:,} | {rows[0]['payload_bytes']:,} | "
            f"{pm([r['acc']['avg'] for r in rows])} | {mean([r['acc']['avg'] for r in rows]) - base['avg']:+.3f} | "
            + ' | '.join(pm(famacc(rows, ts)) for ts in fams.values())
            + f" | {pm([r['val_loss'] for r in rows])} | {pm([r['train_time_s'] for r in rows], '{:.0f}')} |"
        )
    L += [
        '',
        'Exact match minus the baseline, per family (mean over seeds):',
        '',
        '| method | average | ' + ' | '.join(fams) + ' |',
        '|---|---:|' + '---:|' * len(fams),
    ]
    for m, rows in mix.items():
        L.append(
            f"| {m} | {mean([r['acc']['avg'] for r in rows]) - base['avg']:+.3f} | "
            + ' | '.join(
                f"{mean(famacc(rows, ts)) - mean([base[t] for t in ts]):+.3f}"
                for ts in fams.values()
            )
            + ' |'
        )
    L += [
        '',
        'Per task (mean over seeds):',
        '',
        '| task | family | baseline | ' + ' | '.join(mix) + ' |',
        '|---|---|---:|' + '---:|' * len(mix),
    ]
    for t in tasks:
        L.append(
            f"| {t} | {TASK_FAMILY.get(t, '-')} | {base[t]:.3f} | "
            + ' | '.join(f"{mean([r['acc'][t] for r in rows]):.3f}" for rows in mix.values())
            + ' |'
        )
    L += [
        '',
        '## 3. Spectra of ΔW at the tuned learning rates (analyze.py)',
        '',
        f"![spectra]({os.path.basename(spec['figure'])})",
        '',
    ]
    for title, per in (
        ('all six Linears of each block', spec['per_method']),
        ('W_q and W_v', spec['qv']),
    ):
        L += [
            f'On {title}:',
            '',
            '| method | effective rank exp(H) | top σ² share | rank for 90% energy | ‖ΔW‖/‖W0‖ | '
            'intruders/matrix (ε=0.5) |',
            '|---|---:|---:|---:|---:|---:|',
        ]
        for m, d in per.items():
            L.append(
                f"| {m} | {pm(d['effective_rank_mean'], '{:.2f}')} | {pm(d['top_share_mean'])} | "
                f"{pm(d['energy_rank_mean'], '{:.1f}')} | {pm(d['rel_norm_mean'], '{:.3f}')} | {pm(d['intruders_0.5'], '{:.2f}')} |"
            )
        L.append('')
    L += [
        'First seed, as analyze.py prints it:',
        '',
        '```',
        spec['table_seed0'],
        '```',
        '',
        '## 4. NOLA compression',
        '',
        '| adapter | trainable | payload bytes | file bytes (torch.save) | avg exact match |',
        '|---|---:|---:|---:|---:|',
    ]
    for m, d in cp.items():
        L.append(
            f"| {m} | {d['trainable_params']:,} | {mean(d['payload_bytes']):,.0f} | {mean(d['file_bytes']):,.0f} | {pm(d['acc'])} |"
        )
    sz = comp['sizes']
    L += [
        '',
        "## 5. Composition: a Q/A bot on a manual (LoRA Soups' practical case)",
        '',
        f"Skill A: a LoRA trained by next-token prediction on the manual ({sz['manual']['train']} short documents: "
        f"{comp['manual']['descriptions']} descriptions of each of its people, each fact in one of "
        f"{comp['manual']['wordings']} wordings, the sentences in shuffled order, as Allen-Zhu & Li's bioS multi + "
        "permute, which makes facts read once per wording extractable by Q/A learned on other people). Skill B: a LoRA "
        f"trained on Q/A about the corpus's people ({sz['known_qa']['train']} items). The composite asks about the "
        f"manual's people: its train split ({sz['manual_qa']['train']} items about 60 of them, 5% of the skills' data) "
        f"is what CAT learns its weights on; its val split ({sz['manual_qa']['val']} items) and test split "
        f"({sz['manual_qa']['test']} items) ask about 20 and 60 others whose facts are in the manual only. CAT's rate, "
        "data mixing's rate and the merges' λ are chosen on the val split (seed "
        f"{S['seeds'][0]}). The upper bound, a LoRA of rank {comp['upper']['rank']} trained {comp['upper']['iters']:,} "
        f"iterations, reads the manual and {sz['manual_qa_ample']['train']} composite Q/A items about the 60. Format-correct: the answer is one city or job, whichever; content-correct: the right value "
        f"appears in what the model wrote. Most-common-answer baseline on the composite: {comp['baseline']:.3f}.",
        '',
        '| method | rates swept (val exact match) | chosen |',
        '|---|---|---:|',
        *[
            f"| {m} | {', '.join(f'{lr:g}: {a:.3f}' for lr, a in zip(w['grid'], w['val_acc']))} | {w['chosen']:g} |"
            for m, w in comp.get('sweeps', {}).items()
        ],
        '',
        '| method | trainable | composite exact match | format-correct | content-correct | known_qa (skill B) | '
        'manual recall (skill A) | λ |',
        '|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for m, rows in comp['runs'].items():
        lam = [r['lambda'] for r in rows if r.get('lambda') is not None]
        L.append(
            f"| {m} | {comp['trainable'][m]:,} | {pm([r['manual_qa'] for r in rows])} | "
            f"{pm([r['format'] for r in rows], '{:.2f}')} | {pm([r['content'] for r in rows], '{:.2f}')} | "
            f"{pm([r['known_qa'] for r in rows])} | {pm([r['recall'] for r in rows])} | "
            f"{', '.join(f'{x:g}' for x in lam) or '-'} |"
        )
    L += [
        '',
        f"## 6. Control: shift-then-reverse (two hops; seed {ctl['seed']})",
        '',
        f"Each skill trains {ctl.get('iters', '?')} iterations, enough to pass its own gate (≥ 0.8), so that a score "
        'near 0 on the two-hop composite is what composing them gives, not a half-learned skill. '
        + '; '.join(
            f"{g['gate']}: {g['measured']:.3f} ({'pass' if g['pass'] else 'FAIL'})"
            for g in G
            if g['key'].startswith('control') and g['measured'] is not None
        ),
        '',
        '| method | ' + ' | '.join(ctl['tasks']) + ' |',
        '|---|' + '---:|' * len(ctl['tasks']),
    ]
    for m, d in ctl['acc'].items():
        L.append(f"| {m} | " + ' | '.join(f"{d[t]:.3f}" for t in ctl['tasks']) + ' |')
    L += [
        '',
        '## 7. The seed papers: claim (published numbers), finding here, verdict',
        '',
        '| paper | claim (published numbers) | this study | verdict |',
        '|---|---|---|---|',
    ]
    for v in res['verdicts']:
        L.append(f"| {v['paper']} | {v['claim']} | {v['finding']} | **{v['verdict']}** |")
    L += [
        '',
        f"Scale: a {b['model_args']['n_layer']}-layer, {b['params'] / 1e6:.1f}M-parameter model (d = "
        f"{b['model_args']['n_embd']}) on a synthetic world, {S['mix_iters']} iterations of CPU fine-tuning, exact match "
        'instead of BLEU; the papers used GPT-2 M/L and LLaMA on real data. A verdict here says what happens at '
        'this scale, not whether the paper is right.',
        '',
    ]
    L += list(sections)
    with open(path + '.tmp', 'w') as f:
        f.write('\n'.join(L))
    os.replace(path + '.tmp', path)
