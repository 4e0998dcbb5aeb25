"""
Study 3.1's write-up (the runs and the statistics: study/regret.py): its figures, its rows of STUDY.md's claims
table (verdicts) and its section of STUDY.md (report_lines).
"""

import os

from study.regret import (
    DEPARTURE_MARGIN,
    RANK_SPREAD,
    RATIO_BAND,
    attention_verdict,
    capacity_verdict,
    departure,
    each_adapter_verdict,
    learned_gates,
    lr_verdict,
)
from study.verdicts import (
    CI_LEVEL,
    N_BOOT,
    direction,
    fmt_ci,
    gate_failures,
    gates,
    item_rows,
    mean,
    paired_diff_ci,
    pm,
)


# ---- figures (matplotlib optional: without it, the tables in STUDY.md carry the same numbers) ---------------
def figure():
    try:  # the Figure API, not pyplot: no backend or global state is changed (as analyze.save_figure)
        from matplotlib import figure as mpl_figure
    except ImportError:
        return None
    return mpl_figure.Figure


def save(fig, path):
    tmp = f'{path}.{os.getpid()}.tmp.png'
    fig.savefig(tmp, dpi=150)
    os.replace(tmp, path)
    return path


def save_curves(out, path):
    """Validation loss against iteration: full fine-tuning and each rank at its best grid rate (seed 0)."""
    Figure = figure()
    curves = {m: sw['curve'] for m, sw in out['sweeps'].items() if sw.get('curve')}
    if Figure is None or not curves:
        return None
    fig = Figure(figsize=(6.5, 4.2), layout='tight')
    ax = fig.subplots()
    for i, (m, c) in enumerate(curves.items()):
        ax.plot(
            *zip(*c), marker='os^Dv*'[i % 6], ms=3, label=f"{m} (lr {out['sweeps'][m]['best']:g})"
        )
    ax.set(yscale='log', xlabel='iteration', ylabel='validation loss (fixed batches)')
    ax.set_title(
        'Full fine-tuning and LoRA (all Linears, alpha 32) at their best rates', fontsize=9
    )
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    return save(fig, path)


def save_scatter(out, mix, path):
    """Learned (mixture test exact match) against forgotten (recall drop, LM-loss rise), one point per run."""
    Figure = figure()
    if Figure is None:
        return None
    fg, base = out['forgetting'], out['forgetting']['base']
    fig = Figure(figsize=(10, 4), layout='tight')
    axes = fig.subplots(1, 2)
    for i, (m, rows) in enumerate(mix.items()):
        learned = [r['acc']['avg'] for r in rows]
        drop = [recall_share(base) - recall_share(f) for f in fg[m]]
        rise = [mean(f['lm']) - mean(base['lm']) for f in fg[m]]
        for ax, x in zip(axes, (drop, rise)):
            ax.scatter(x, learned, marker='os^Dv*'[i % 6], label=m)
    axes[0].set(xlabel='fact recall lost (base minus after)', ylabel='mixture test exact match')
    axes[1].set(xlabel='LM loss gained on held-out corpus text (nats)')
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle('Learned vs forgotten (Biderman et al. plot it so): each point one mixture run')
    return save(fig, path)


# ---- verdicts and the write-up, from res['regret'] (and the mixture's rows) ---------------------------------
CLAIMS = {
    'Without Regret: lr': (
        "Schulman et al. 2025 (LoRA Without Regret): with alpha fixed at 32, LoRA's optimal learning rate is "
        "about 10x full fine-tuning's and nearly the same at every rank (about 15x for very short runs)"
    ),
    'Without Regret: capacity': (
        "Schulman et al. 2025: LoRA follows full fine-tuning's loss curve, then leaves it after a number of steps "
        "that grows with its rank (its capacity runs out)"
    ),
    'Without Regret: attention-only': (
        "Schulman et al. 2025: LoRA on attention only falls behind LoRA on all layers (the MLPs included), even "
        "at an equal number of trainable parameters"
    ),
    'Learns Less': (
        "Biderman et al. 2024 (LoRA Learns Less and Forgets Less; Llama-2 7B/13B on code and math): LoRA gains "
        "less than full fine-tuning on the target domain"
    ),
    'Forgets Less': (
        "Biderman et al. 2024: LoRA keeps more of what the base could do outside the target domain "
        "(there: HellaSwag, ARC-Challenge, WinoGrande)"
    ),
}


RETAINS = {
    'higher': 'lower',
    'lower': 'higher',
    'no difference': 'no difference',
}  # of a loss, retained more


def recall_share(f):
    return mean([h for hits in f['recall'].values() for h in hits])


def forgetting_rows(fg, m, n_seeds=None):
    """Per seed, in seed order: ({fact: [0/1 per probe]}, {'windows': [LM loss per window]}) (the base repeated)."""
    rows = [fg[m]] * n_seeds if m == 'base' else sorted(fg[m], key=lambda r: r['seed'])
    return [r['recall'] for r in rows], [{'windows': r['lm']} for r in rows]


def fmt_range(x, ci, f='{:.3g}'):
    return f'{f.format(x)} [{f.format(ci[0])}, {f.format(ci[1])}]'


def figures(out, mix, results):
    """The stage's two PNGs in results/ (none without matplotlib): their paths."""
    made = (
        save_curves(out, os.path.join(results, 'regret_curves.png')),
        save_scatter(out, mix, os.path.join(results, 'regret_forgetting.png')),
    )
    return [f for f in made if f]


def verdicts(res):
    """The stage's rows of the claims table: paper, claim, finding, ci, agrees, verdict (as verdicts.verdicts)."""
    rg, mix, R = res['regret'], res['mixture'], res['settings']['R']
    sweeps, G = rg['sweeps'], gates(res)
    ranks = [m for m in sweeps if m.startswith('lora_r')]
    row = lambda paper, finding, verdict, ci=None: {
        'paper': paper,
        'claim': CLAIMS[paper],
        'finding': finding,
        'ci': ci,
        'agrees': verdict == 'agrees',
        'verdict': verdict,
    }
    out = []

    failed = learned_gates(sweeps, rg['base_val_loss'], ['full'] + ranks)
    opt, rat = rg['optima'], rg['ratios']
    finding = [
        f"full fine-tuning's optimum {fmt_range(opt['full']['lr'], opt['full']['ci'])}"
        if 'full' in opt
        else f"full fine-tuning's best grid rate {sweeps['full']['best']:g} (no fit)"
    ]
    finding += [
        f"{m}: {fmt_range(opt[m]['lr'], opt[m]['ci'])}, ratio {fmt_range(rat[m]['ratio'], rat[m]['ci'], '{:.1f}')}"
        for m in ranks
        if m in rat
    ]
    if rg['spread']:
        finding.append(
            f"largest over smallest ratio {fmt_range(rg['spread']['spread'], rg['spread']['ci'], '{:.2f}')}"
        )
    failed += [
        f'gate failed: {m} has no fitted optimum (a run at its best rate or a neighbour diverged)'
        for m in ['full'] + ranks
        if m not in opt and not sweeps[m]['edge']
    ]
    verdict = lr_verdict({m: rat[m] for m in ranks if m in rat}, rg['spread'], failed)
    out.append(row('Without Regret: lr', '; '.join(finding), verdict))

    curves = {m: sweeps[m]['curve'] for m in ['full'] + ranks}
    failed = learned_gates(
        {m: dict(sweeps[m], edge=False) for m in curves}, rg['base_val_loss'], curves
    )
    deps = {}
    if all(curves.values()):
        deps = {int(m[len('lora_r') :]): departure(curves[m], curves['full']) for m in ranks}
    else:
        failed.append('gate failed: a method has no validation curve')
    last = curves['full'][-1] if curves['full'] else None
    finding = (
        f'the iteration each rank leaves full fine-tuning\'s validation loss by more than {DEPARTURE_MARGIN} nats '
        'for good: '
        + ', '.join(f'r={r}: {d if d is not None else "never"}' for r, d in deps.items())
    )
    if last:
        finding += f' (of {last[0]}; full fine-tuning ends at {last[1]:.3f})'
    out.append(row('Without Regret: capacity', finding, capacity_verdict(deps, failed)))

    qv = rg['qv']
    tasks = [t for t in res['baseline'] if t != 'avg']
    lora = f'lora_r{R}'
    ci = paired_diff_ci(item_rows(qv['rows'], tasks), item_rows(mix[lora], tasks))
    failed = gate_failures(G, ('best_adapter',)) + learned_gates(
        sweeps, rg['base_val_loss'], [qv['method']]
    )
    acc = lambda rows: [r['acc']['avg'] for r in rows]
    finding = (
        f"avg exact match, LoRA r={qv['rank']} on W_q,W_v ({sweeps[qv['method']]['trainable_params']:,} trainable, "
        f"lr {sweeps[qv['method']]['best']:g}) vs LoRA r={R} on all Linears ({mix[lora][0]['trainable_params']:,}, "
        f"lr {mix[lora][0]['lr']:g}): {pm(acc(qv['rows']))} vs {pm(acc(mix[lora]))} ({fmt_ci(ci)}: {direction(ci)})"
    )
    out.append(row('Without Regret: attention-only', finding, attention_verdict(ci, failed), ci))

    adapters_ = [m for m in mix if m != 'full']
    learn = {
        a: paired_diff_ci(item_rows(mix[a], tasks), item_rows(mix['full'], tasks))
        for a in adapters_
    }
    finding = '; '.join(
        f"{a} {pm(acc(mix[a]))} vs full {pm(acc(mix['full']))} ({fmt_ci(learn[a])})"
        for a in adapters_
    )
    verdict = each_adapter_verdict(
        {a: 'yes' if direction(ci) == 'lower' else 'no' for a, ci in learn.items()},
        gate_failures(G, ('full_ft',)),
        'learns less',
    )
    out.append(row('Learns Less', 'test exact match: ' + finding, verdict))

    fg, n = rg['forgetting'], len(mix['full'])
    base_r, base_l = forgetting_rows(fg, 'base', n)
    full_r, full_l = forgetting_rows(fg, 'full')
    drop, rise = paired_diff_ci(base_r, full_r), paired_diff_ci(full_l, base_l)
    failed = gate_failures(G, ('base_recall',))
    if 'higher' not in (direction(drop), direction(rise)):
        failed.append(
            f'gate failed: full fine-tuning forgets nothing measurable (recall drop {fmt_ci(drop)}; '
            f'LM-loss rise {fmt_ci(rise)})'
        )
    answers, finding = (
        {},
        [
            f"full fine-tuning: recall {recall_share(fg['base']):.3f} -> {pm([recall_share(f) for f in fg['full']])}, "
            f"LM loss {mean(fg['base']['lm']):.3f} -> {pm([mean(f['lm']) for f in fg['full']])}"
        ],
    )
    for a in adapters_:
        a_r, a_l = forgetting_rows(fg, a)
        keeps = (direction(paired_diff_ci(a_r, full_r)), direction(paired_diff_ci(full_l, a_l)))
        answers[a] = 'yes' if 'higher' in keeps and 'lower' not in keeps else 'no'
        finding.append(
            f"{a}: recall {pm([recall_share(f) for f in fg[a]])} (vs full: {keeps[0]}), LM loss "
            f"{pm([mean(f['lm']) for f in fg[a]])} (vs full: {RETAINS[keeps[1]]})"
        )
    verdict = each_adapter_verdict(answers, failed, 'forgets less')
    out.append(row('Forgets Less', '; '.join(finding), verdict))
    return out


HEADING = '## 8. LoRA Without Regret; LoRA Learns Less and Forgets Less (study 3.1)'


def report_lines(res):
    """STUDY.md's section for this stage (the claims rows are in the claims table)."""
    if 'regret' not in res:
        return [
            '',
            HEADING,
            '',
            'Not run yet: `python -m study --stage=regret` (its finished runs are reused).',
            '',
        ]
    rg, mix, S = res['regret'], res['mixture'], res['settings']
    P, sweeps = S['regret'], rg['sweeps']
    ranks = [m for m in sweeps if m.startswith('lora_r')]
    L = [
        '',
        HEADING,
        '',
        f"Full fine-tuning and LoRA on all Linears at ranks {', '.join(map(str, P['ranks']))} with alpha "
        f"fixed at {P['alpha']:g} (s = {P['alpha']:g}/r), {S['mix_iters']} iterations on the mixture as in "
        "section 2. Rates from the ladder 10^(k/5) (1, 1.6, 2.5, 4, 6.3 per decade), seed 0, each grid "
        f"widened past an edge its best rate sits on (at most {P['widen']} rungs); LoRA's grids start at "
        f"{P['lora_points']} rungs around 10x full fine-tuning's optimum ({rg['lora_grid_centre']:g}). "
        "The validation loss decides (the answer-token loss on every validation item, per task, then the "
        "mean over tasks; exact match beside it). Optimum: the vertex of the parabola in log(lr) through "
        f"the best rate and its neighbours, seeds {S['seeds'][:2]} there; interval ({CI_LEVEL:.0%}): "
        f"{N_BOOT:,} bootstrap resamples of seeds and of validation items within each task, the same draw "
        "for every method (the ratios are paired). Rules fixed before the runs: every ratio's interval "
        f"inside [{RATIO_BAND[0]:g}, {RATIO_BAND[1]:g}] and the largest ratio over the smallest at most "
        f"{RANK_SPREAD:g}x; a rank leaves full fine-tuning where its validation loss stays more than "
        f"{DEPARTURE_MARGIN} nats above full's. Base validation loss {rg['base_val_loss']:.3f}. "
        "Batch size: not measured.",
        '',
    ]
    width = max(len(sweeps[m]['lrs']) for m in ['full'] + ranks)
    L += [
        '| method | trainable | '
        + ' | '.join(f'lr {i + 1}' for i in range(width))
        + ' | best | optimum | ratio to full |',
        '|---|---:|' + '---:|' * (width + 3),
    ]
    for m in ['full'] + ranks:
        sw, o, r = sweeps[m], rg['optima'].get(m), rg['ratios'].get(m)
        cells = [
            f"{lr:g}: " + ('diverged' if v is None else f'{v:.3f} ({a:.2f})')
            for lr, v, a in zip(sw['lrs'], sw['val_loss'], sw['val_acc'])
        ]
        cells += ['-'] * (width - len(cells))
        L.append(
            f"| {m} | {sw['trainable_params'] or 0:,} | "
            + ' | '.join(cells)
            + f" | {sw['best']:g}{' (edge)' if sw['edge'] else ''} | "
            + (fmt_range(o['lr'], o['ci']) if o else '-')
            + ' | '
            + (fmt_range(r['ratio'], r['ci'], '{:.1f}') if r else '-')
            + ' |'
        )
    L += ['', 'Cells: validation loss (validation exact match).', '']
    if rg['spread']:
        L += [
            f"Largest over smallest ratio: {fmt_range(rg['spread']['spread'], rg['spread']['ci'], '{:.2f}')}.",
            '',
        ]
    curves = {m: sweeps[m]['curve'] for m in ['full'] + ranks if sweeps[m].get('curve')}
    figs = {os.path.basename(f) for f in rg.get('figures', [])}
    L += [
        f"Validation loss every {P['curve_every']} iterations ({P['curve_eval_iters']} fixed batches), "
        'seed 0, each method at its best grid rate'
        + (': ![curves](regret_curves.png)' if 'regret_curves.png' in figs else ':'),
        '',
        '| iteration | ' + ' | '.join(curves) + ' |',
        '|---:|' + '---:|' * len(curves),
    ]
    if curves:
        for j, (it, _) in enumerate(next(iter(curves.values()))):
            L.append(f'| {it} | ' + ' | '.join(f'{c[j][1]:.3f}' for c in curves.values()) + ' |')
    qv = rg['qv']
    L += [
        '',
        f"Attention only: LoRA r={qv['rank']} on W_q,W_v (alpha 2r), the rank whose trainable count is nearest to "
        f"all-Linears r={S['R']}'s; rates "
        + ', '.join(
            f"{lr:g}: {'diverged' if v is None else f'{v:.3f}'}"
            for lr, v in zip(sweeps[qv['method']]['lrs'], sweeps[qv['method']]['val_loss'])
        )
        + f" (validation loss), chosen {sweeps[qv['method']]['best']:g}; test exact match per seed "
        + ', '.join(f"{r['acc']['avg']:.3f}" for r in qv['rows'])
        + '.',
        '',
        'Forgetting: fact recall in the corpus\'s own wording (every person, every fact: the base gate\'s probe) and '
        "the LM loss on the world corpus's held-out text (every window of its val split), before (base) and after "
        'each mixture run at its chosen rate; learned: the mixture\'s test exact match.'
        + (
            ' ![learned vs forgotten](regret_forgetting.png)'
            if 'regret_forgetting.png' in figs
            else ''
        ),
        '',
        '| model | test exact match | fact recall | LM loss, held-out text |',
        '|---|---:|---:|---:|',
    ]
    fg = rg['forgetting']
    L.append(f"| base | - | {recall_share(fg['base']):.3f} | {mean(fg['base']['lm']):.3f} |")
    for m, rows in mix.items():
        L.append(
            f"| {m} | {pm([r['acc']['avg'] for r in rows])} | {pm([recall_share(f) for f in fg[m]])} | "
            f"{pm([mean(f['lm']) for f in fg[m]])} |"
        )
    return L + ['']
