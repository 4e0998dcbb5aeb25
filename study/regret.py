"""
Study 3.1: "LoRA Without Regret" (Schulman et al. 2025) and "LoRA Learns Less and Forgets Less" (Biderman
et al. 2024) on the study's world. Its runs, analysis, verdict rules, figures and STUDY.md section; study/run.py
calls stage() (the 'regret' stage); study/regret_report.py holds its figures, claims rows and STUDY.md section.

 learning rate  full fine-tuning and LoRA on all Linears at ranks 1, 4, 16, 64 (alpha fixed at 32: s = 32/r, the
                paper's parametrisation), each over a grid of the 10^(k/5) ladder (1, 1.6, 2.5, 4, 6.3 per decade),
                seed 0, widened past an edge its best rate sits on; the second seed at the best rate and its two
                neighbours. Validation loss decides (smooth; exact match reported beside). The optimum: the vertex
                of the parabola in log10(lr) through the best rate and its neighbours; its interval and the ratio
                LoRA / full's, per rank, by a bootstrap over seeds and validation items (bootstrap_optima)
 capacity       the validation-loss curves of those seed-0 runs at their best grid rates; the iteration each rank
                leaves full fine-tuning's curve for good (departure)
 attention      LoRA on W_q,W_v at the rank whose trainable count is all-Linears rank R's, its own rate, every seed,
                paired per test item against the mixture's all-Linears rank-R runs
 forgetting     the base and every mixture run at its chosen rate: fact recall in the corpus's own wording (the
                base gate's probe) and the LM loss on the world corpus's held-out text, against the mixture's test
                exact match (what each learned)
Batch size (the paper's fifth point) is not measured. Every rule below is fixed in code before the runs.
"""

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

import adapters
from sources import world
from study.verdicts import (
    BOOT_SEED,
    CI_LEVEL,
    N_BOOT,
    direction,
    mean,
)

# ---- the rules, fixed before the runs ---------------------------------------------------------------
RATIO_BAND = (
    5.0,
    20.0,
)  # "about 10x": every rank's ratio LoRA / full (its whole CI) inside this band
RANK_SPREAD = 2.0  # "nearly rank-invariant": the largest rank's ratio over the smallest's (its CI) at most this
# a rank has left full fine-tuning's curve at the first evaluation from which its validation loss stays more than
# this above full's (nats; the curves are on the same fixed batches: a paired gap). 'For good': a rank that lags
# early and catches up has not run out of capacity there
DEPARTURE_MARGIN = 0.02

# budgets (study/run.py's FULL and QUICK carry them as S.regret); grids are rungs k of the ladder 10^(k/5)
FULL = dict(
    ranks=[1, 4, 16, 64],
    alpha=32.0,
    # the mixture's sweep put full fine-tuning's lowest validation loss at or below 1e-4..3e-4 (1e-4: 0.546,
    # 3e-4: 0.555, 1e-3: 0.683): 6.3e-5 .. 4e-4
    full_rungs=[-21, -20, -19, -18, -17],
    lora_points=3,  # LoRA's grid: this many rungs centred on 10x full fine-tuning's optimum
    widen=2,  # a grid grows by up to this many rungs past an edge its best rate sits on
    curve_every=50,  # iterations between the points of a validation curve
    curve_eval_iters=5,  # batches per point (the same fixed batches for every run of a seed)
    qv_rungs=[-14, -13, -12],  # 1.6e-3 .. 4e-3: the mixture's LoRA on W_q,W_v chose 3e-3 at s = 2
    probes=None,  # recall probes per fact (None: every person)
    windows=None,  # held-out corpus windows for the LM loss (None: all of the world's val split)
)
QUICK = dict(  # one rate each: the smoke test runs every line, not a sweep
    ranks=[1, 4],
    alpha=32.0,
    full_rungs=[-14],
    lora_points=1,
    widen=0,
    curve_every=2,
    curve_eval_iters=1,
    qv_rungs=[-13],
    probes=4,
    windows=4,
)


def ladder(k):
    """Rung k of the grids' ladder: 10^(k/5) to two digits (1, 1.6, 2.5, 4, 6.3 per decade; 1e-4 is the literal)."""
    return float(f'{10 ** (k / 5):.2g}')


def sweep(rungs, loss, widen):
    """loss(k) (lower is better; None: the run diverged) over the rungs, widening one rung past whichever edge the
    best sits on, at most `widen` times (run.py's tune_lr on this ladder). Returns (rungs swept, best, {k: loss})."""
    rungs, losses = sorted(rungs), {}
    key = lambda k: math.inf if losses[k] is None else losses[k]
    for _ in range(widen + 1):
        losses.update({k: loss(k) for k in rungs if k not in losses})
        best = min(rungs, key=key)
        if len(rungs) < 2 or best not in (rungs[0], rungs[-1]):
            break
        rungs = rungs + [rungs[-1] + 1] if best == rungs[-1] else [rungs[0] - 1] + rungs
    return [k for k in rungs if k in losses], best, losses


# ---- statistics (pure: the tests plant their inputs) -------------------------------------------------
def vertex(xs, ys):
    """The x of the lowest point of the parabola through (xs, ys) (three points, xs ascending), clipped to
    [xs[0], xs[-1]]: the grid brackets the optimum, the fit only places it between rungs. A parabola that
    does not open upwards has no vertex to trust: the lowest point given."""
    a, b, _ = np.polyfit(xs, ys, 2)
    if a <= 0:
        return float(xs[int(np.argmin(ys))])
    return float(min(max(-b / (2 * a), xs[0]), xs[-1]))


def task_losses(items, seeds, picks):
    """Validation loss as train.py's final evaluation computes it (per task: answer-token NLL / tokens; then the
    mean over tasks), averaged over `seeds`, on the items `picks` names per task.
    items[s][task] = [[nll, tokens] per item] (seed index s)."""
    per_seed = []
    for s in seeds:
        per_seed.append(
            mean(
                [
                    float(np.sum(a[p, 0]) / np.sum(a[p, 1]))
                    for a, p in ((np.asarray(items[s][t], dtype=float), picks[t]) for t in picks)
                ]
            )
        )
    return mean(per_seed)


def fitted_optimum(lrs, items, seeds=None, picks=None):
    """10 ** vertex of the validation losses (task_losses over `seeds` and `picks`; default: every seed and
    item) at three rates, in log10(lr). items: per rate, what task_losses reads."""
    seeds = range(len(items[0])) if seeds is None else seeds
    picks = picks or {t: np.arange(len(v)) for t, v in items[0][0].items()}
    ys = [task_losses(per_rate, seeds, picks) for per_rate in items]
    return 10 ** vertex([math.log10(lr) for lr in lrs], ys)


def bootstrap_optima(fits, n_boot=N_BOOT, level=CI_LEVEL, seed=BOOT_SEED):
    """The optimum of each method and its interval; the ratio of each other method's optimum to 'full''s with
    its interval. fits: {method: (lrs, items)}: three rates (the best and its neighbours) and, per rate, the
    per-seed per-item losses task_losses reads (the same seeds and validation items for every method).
    Each resample draws the seeds and, within each task, the validation items with replacement, the same draw
    for every method (the ratios are paired); the vertex is refitted each time. The estimate: the vertex of
    the fit to all seeds and items. Returns {method: {'lr', 'ci'}}, {method: {'ratio', 'ci'}}, and the ratio
    of the largest to the smallest ratio over the non-full methods ({'spread', 'ci'}, None with fewer than two)."""
    as_arrays = lambda per_seed: [
        {t: np.asarray(v, dtype=float) for t, v in d.items()} for d in per_seed
    ]
    fits = {
        m: (lrs, [as_arrays(per_seed) for per_seed in items]) for m, (lrs, items) in fits.items()
    }
    methods = list(fits)
    first = fits[methods[0]][1][0]
    n_seeds, tasks = len(first), list(first[0])
    sizes = {t: len(first[0][t]) for t in tasks}

    optimum = lambda m, seeds, picks: fitted_optimum(*fits[m], seeds, picks)
    est = {m: fitted_optimum(*fits[m]) for m in methods}
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in methods}
    for _ in range(n_boot):
        seeds = rng.integers(n_seeds, size=n_seeds)
        picks = {t: rng.integers(n, size=n) for t, n in sizes.items()}
        for m in methods:
            draws[m].append(optimum(m, seeds, picks))
    q = [(1 - level) / 2, (1 + level) / 2]
    ci = lambda xs: [float(v) for v in np.quantile(xs, q)]
    optima = {m: {'lr': est[m], 'ci': ci(draws[m])} for m in methods}
    others = [m for m in methods if m != 'full']
    ratios = {}
    if 'full' in fits:
        full = np.array(draws['full'])
        ratios = {
            m: {'ratio': est[m] / est['full'], 'ci': ci(np.array(draws[m]) / full)} for m in others
        }
    spread = None
    if len(ratios) >= 2:
        r = np.array([np.array(draws[m]) / full for m in ratios])
        e = [ratios[m]['ratio'] for m in ratios]
        spread = {'spread': max(e) / min(e), 'ci': ci(r.max(0) / r.min(0))}
    return optima, ratios, spread


def departure(curve, full_curve, margin=DEPARTURE_MARGIN):
    """The first iteration from which `curve`'s loss stays more than `margin` above `full_curve`'s at every
    later evaluation; None (never) if it ends within the margin. Both: [(iteration, loss)] at the same iterations."""
    if [i for i, _ in curve] != [i for i, _ in full_curve]:
        raise ValueError('departure: the curves were evaluated at different iterations')
    out = None
    for (it, loss), (_, full) in zip(curve, full_curve):
        if loss - full > margin:
            out = it if out is None else out
        else:
            out = None
    return out


# ---- the verdict rules (pure) ---------------------------------------------------------------------
def outcome(parts):
    """parts: [(what, 'yes' | 'no' | 'unsure')] -> the verdict's word: agrees (all yes), does not reproduce (all
    no), partly (some of each), inconclusive (any unsure and no no), with what was measured."""
    said = ', '.join(f'{w} {a}' for w, a in parts)
    answers = {a for _, a in parts}
    if answers == {'yes'}:
        return 'agrees'
    if 'no' not in answers:
        return f'inconclusive ({said})'
    if answers == {'no'}:
        return f'does not reproduce: {said}'
    return f'partly: {said}'


def inside(ci, lo, hi):
    """'yes' if the interval lies inside [lo, hi], 'no' if wholly outside it, else 'unsure'."""
    a, b = ci
    return 'yes' if lo <= a and b <= hi else 'no' if b < lo or a > hi else 'unsure'


def learned_gates(sweeps, base_loss, methods):
    """The gates of the sweeps' verdicts: each method's best validation loss below the base's (it learned) and
    its best rate inside the swept grid (the optimum is bracketed)."""
    out = []
    for m in methods:
        sw = sweeps[m]
        best = sw['val_loss'][sw['lrs'].index(sw['best'])]
        if best is None or not best < base_loss:
            out.append(
                f'gate failed: {m} did not learn (best val loss {best}, needs < the base\'s {base_loss:.3f})'
            )
        if sw['edge']:
            out.append(
                f"gate failed: {m}'s best rate {sw['best']:g} is on the grid's edge after widening"
            )
    return out


def lr_verdict(ratios, spread, failed):
    """ "LoRA's optimal rate is about 10x full fine-tuning's, nearly the same for every rank"."""
    if failed or not ratios:
        return 'inconclusive (' + ('; '.join(failed) or 'no ratio') + ')'
    band = [inside(r['ci'], *RATIO_BAND) for r in ratios.values()]
    in_band = 'no' if 'no' in band else 'unsure' if 'unsure' in band else 'yes'
    flat = 'unsure'
    if spread is not None:
        lo, hi = spread['ci']
        flat = 'yes' if hi <= RANK_SPREAD else 'no' if lo > RANK_SPREAD else 'unsure'
    return outcome(
        [
            (f'every ratio in [{RATIO_BAND[0]:g}, {RATIO_BAND[1]:g}]', in_band),
            (f'within {RANK_SPREAD:g}x of each other', flat),
        ]
    )


def capacity_verdict(departures, failed):
    """ "A higher rank follows full fine-tuning longer". departures: {rank: iteration or None (never)}."""
    if failed:
        return 'inconclusive (' + '; '.join(failed) + ')'
    ranks = sorted(departures)
    at = [math.inf if departures[r] is None else departures[r] for r in ranks]
    said = ', '.join(
        f'r={r}: {departures[r] if departures[r] is not None else "never"}' for r in ranks
    )
    if all(a == math.inf for a in at):
        return f'inconclusive (no rank leaves full fine-tuning within the budget: {said})'
    if any(b < a for a, b in zip(at, at[1:])):
        return f'disagrees (a higher rank leaves earlier: {said})'
    if at[0] == at[-1]:
        return f'does not reproduce (every rank leaves at the same iteration: {said})'
    return 'agrees'


def attention_verdict(ci, failed):
    """ "Attention-only LoRA falls behind all-Linears LoRA at an equal parameter count". ci: qv minus all-Linears."""
    if failed:
        return 'inconclusive (' + '; '.join(failed) + ')'
    d = direction(ci)
    return (
        'agrees'
        if d == 'lower'
        else 'does not reproduce (no difference)'
        if d == 'no difference'
        else 'disagrees (attention-only is higher)'
    )


def each_adapter_verdict(answers, failed, what):
    """answers: {adapter: 'yes' | 'no'} on `what`; the verdict over all adapters."""
    if failed:
        return 'inconclusive (' + '; '.join(failed) + ')'
    return outcome([(f'{a} {what}', v) for a, v in answers.items()])


# ---- the stage: runs and their numbers ------------------------------------------------------------
def lora_numbers_per_rank(model, targets):
    """Trainable numbers per unit of rank of LoRA on the Linears named by targets (A: r x in, B: out x r)."""
    ends = tuple('.' + t for t in targets.split(','))
    return sum(
        m.in_features + m.out_features
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(ends)
    )


@torch.no_grad()
def item_losses(model, ds, split='val'):
    """{task: [[answer NLL (nats, summed), answer tokens] per item]}: the per-item parts of ds.answer_loss."""
    out, dev = {}, next(model.parameters()).device
    model.eval()
    for t in ds.tasks:
        items, rows = ds.data[t][split], []
        for i in range(0, len(items), 64):
            x, y = ds.collate(items[i : i + 64])
            logits, _ = model(x.to(dev))
            nll = F.cross_entropy(
                logits.float().transpose(1, 2), y.to(dev), ignore_index=-1, reduction='none'
            )
            rows += [[round(a, 5), int(n)] for a, n in zip(nll.sum(1).tolist(), (y != -1).sum(1))]
        out[t] = rows
    return out


@torch.no_grad()
def probe_hits(model, ds, probes, max_new=6):
    """run.recall's probes, one 0/1 per probe (the paired verdicts pair them)."""
    model.eval()
    prompts = [[ds.stop_token] + ds.tokenizer.encode_ordinary(p) for p, _ in probes]
    outs = [ds.decode(y) for y in ds.generate(model, prompts, max_new)]
    return [int(o.strip().replace('.', ' ').split(' ')[0] == v) for o, (_, v) in zip(outs, probes)]


@torch.no_grad()
def window_losses(model, stream, block_size, n=None):
    """The mean next-token loss of each consecutive block_size window of the corpus's held-out text (the
    'world' dataset's val split: every token once, the same windows for every model)."""
    model.eval()
    tokens = np.memmap(os.path.join(stream.folder, 'val.bin'), dtype=stream.meta['dtype'], mode='r')
    starts = list(range(0, len(tokens) - block_size, block_size))[:n]
    out, dev = [], next(model.parameters()).device
    for i in range(0, len(starts), 32):
        x = torch.stack(
            [
                torch.from_numpy(tokens[s : s + block_size + 1].astype(np.int64))
                for s in starts[i : i + 32]
            ]
        )
        logits, _ = model(x[:, :-1].to(dev))
        loss = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:].to(dev), reduction='none')
        out += [round(v, 5) for v in loss.mean(1).tolist()]
    return out


class Regret:
    """The stage's runs through the study's Study (its records, checkpoints and datasets)."""

    def __init__(self, study, all_linears):
        self.st, self.S, self.P, self.all = study, study.S, study.S.regret, all_linears
        self.iters = self.S.mix_iters
        self.ds = study.dataset('mixture')

    def args(self, method, lr):
        """(config, options) of a method: 'full', 'lora_r<r>' (all Linears, alpha fixed) or 'qv_r<r>' (alpha 2r)."""
        lr_args = [f'--learning_rate={lr}', f'--min_lr={lr / 10}', '--eval_split=val']
        if method == 'full':
            return 'config/finetune_mixture.py', lr_args
        r = int(method.split('_r')[1])
        targets, alpha = (
            (self.all, self.P['alpha']) if method.startswith('lora') else ('attn.q,attn.v', 2.0 * r)
        )
        lora = [f'--adapter_targets={targets}', f'--lora_r={r}', f'--lora_alpha={alpha}']
        return 'config/lora_mixture.py', lora + lr_args

    def job(self, method, lr, seed, curve=True):
        """(name, arguments) of one run."""
        name = f'regret_{method}_lr{lr:g}_it{self.iters}_s{seed}'
        config, extra = self.args(method, lr)
        if curve:
            every, n = self.P['curve_every'], self.P['curve_eval_iters']
            extra += [f'--eval_interval={every}', f'--eval_iters={n}']
        return name, self.st.run_args(config, seed, self.iters, extra)

    def train(self, method, lr, seed, curve=True):
        """(name, record) of one run; record None when it diverged (train.py stops on a NaN: no record is kept,
        so a later invocation tries it again)."""
        name, argv = self.job(method, lr, seed, curve)
        try:
            return name, self.st.train(name, argv)
        except RuntimeError as e:
            if 'a smaller --learning_rate may help' not in str(e):
                raise
            self.st.log(f'  {name}: diverged ({e})')
            return name, None

    def side_by_side(self, runs, curve=True):
        """Train runs [(method, lr, seed), ...] at once (Study.train_side_by_side)."""
        self.st.train_side_by_side([self.job(m, lr, s, curve) for m, lr, s in runs])

    def val_items(self, method, lr, seed):
        """Per-item validation losses of a run (for the bootstrap), computed once into its record; None: it diverged."""
        name, rec = self.train(method, lr, seed)
        if rec is None:
            return None

        def losses():
            with adapters.merged(model := self.st.finetuned(name)):
                return item_losses(model, self.ds)

        return self.st.cached(name, 'val_items', losses)

    def tune(self, method, rungs, curve=True):
        """The seed-0 sweep of one method: {'lrs', 'val_loss', 'val_acc', 'best', 'edge', 'curve', ...}."""
        seed, runs = self.S.seeds[0], {}

        def loss(k):
            runs[k] = self.train(method, ladder(k), seed, curve)[1]
            return None if runs[k] is None else runs[k]['summary']['eval']['avg']['loss']

        swept, best, losses = sweep(rungs, loss, self.P['widen'])
        summ = lambda k: runs[k]['summary'] if runs[k] else {}
        out = {
            'lrs': [ladder(k) for k in swept],
            'val_loss': [losses[k] for k in swept],
            'val_acc': [summ(k).get('eval', {}).get('avg', {}).get('acc') for k in swept],
            'best': ladder(best),
            'edge': len(swept) > 1 and best in (swept[0], swept[-1]),
            'curve': summ(best).get('val_curve'),
            'trainable_params': summ(best).get('trainable_params'),
            'iters': self.iters,
            'seed': seed,
        }
        self.st.log(
            f'  {method}: best lr {out["best"]:g} (val loss '
            + ', '.join(
                f'{lr:g}: {v if v is None else round(v, 3)}'
                for lr, v in zip(out['lrs'], out['val_loss'])
            )
            + ')'
        )
        return out

    def fit_rates(self, sw):
        """The best rate and its neighbours; None when the best sits on an edge (nothing brackets it) or a
        neighbour diverged."""
        i = sw['lrs'].index(sw['best'])
        if sw['edge'] or len(sw['lrs']) < 3 or None in sw['val_loss'][i - 1 : i + 2]:
            return None
        return sw['lrs'][i - 1 : i + 2]

    def fit_points(self, method, sw):
        """Every fit seed (seeds[:2]) at fit_rates: (lrs, per rate per seed per-item losses); None when there
        are none or a run diverged."""
        lrs, seeds = self.fit_rates(sw), self.S.seeds[:2]
        if lrs is None:
            return None
        items = [[self.val_items(method, lr, s) for s in seeds] for lr in lrs]
        return None if any(None in per_seed for per_seed in items) else (lrs, items)

    def fit_points_side_by_side(self, sweeps):
        """fit_points of several methods {method: sweep}, their runs trained side by side first."""
        rates = {m: self.fit_rates(sw) or [] for m, sw in sweeps.items()}
        self.side_by_side([(m, lr, s) for m in sweeps for lr in rates[m] for s in self.S.seeds[:2]])
        return {m: self.fit_points(m, sw) for m, sw in sweeps.items()}

    def forgetting(self, name=None):
        """Recall per probe ({fact: [0/1]}) and the LM loss per held-out window of the base (name None) or a
        mixture run, computed once into its record (the base's: runs/regret_base_forgetting.json)."""
        key = {'base': self.st.base_fp, 'probes': self.P['probes'], 'windows': self.P['windows']}
        rec_name = name or 'regret_base_forgetting'
        rec = self.st.record(rec_name) or {}
        if rec.get('forgetting', {}).get('key') != key:
            model = self.st.finetuned(name) if name else self.st.base_model()
            people, qa = self.st.world()['people'], self.st.dataset('known_qa')
            with adapters.merged(model):
                recall = {
                    k: probe_hits(model, qa, world.recall_probes(people, [k])[: self.P['probes']])
                    for k in world.FACT_TEMPLATES
                }
                lm = window_losses(
                    model,
                    self.st.dataset('world'),
                    self.st.base_shape['block_size'],
                    self.P['windows'],
                )
            rec = self.st.record(rec_name) or {}  # as saved (a retrained checkpoint rewrote it)
            rec['forgetting'] = {'key': key, 'recall': recall, 'lm': lm}
            self.st.save_record(rec_name, rec)
        return {k: rec['forgetting'][k] for k in ('recall', 'lm')}


def stage(study, res, all_linears):
    """The regret stage: every run and the numbers its verdicts read (res['mixture'] must be there)."""
    rg, P, R = Regret(study, all_linears), study.S.regret, study.S.R
    base = study.base_model()
    with adapters.merged(base):
        base_items = item_losses(base, rg.ds)
    picks = {t: np.arange(len(v)) for t, v in base_items.items()}
    out = {'base_val_loss': task_losses([base_items], [0], picks), 'sweeps': {}}

    # learning rate: full fine-tuning first (LoRA's grids centre on 10x its optimum)
    sweeps, fits = out['sweeps'], {}
    # each sweep's first grid side by side, then its fit points (a grid widened past its edge: one at a time)
    s0 = study.S.seeds[0]
    rg.side_by_side([('full', ladder(k), s0) for k in P['full_rungs']])
    sweeps['full'] = rg.tune('full', P['full_rungs'])
    fits.update(rg.fit_points_side_by_side({'full': sweeps['full']}))
    # the fitted optimum; the best grid rate where nothing brackets it
    centre_lr = sweeps['full']['best'] if fits['full'] is None else fitted_optimum(*fits['full'])
    centre = round(5 * math.log10(10 * centre_lr))
    lo = centre - (P['lora_points'] - 1) // 2
    rungs = list(range(lo, lo + P['lora_points']))
    rg.side_by_side([(f'lora_r{r}', ladder(k), s0) for r in P['ranks'] for k in rungs])
    lora = {f'lora_r{r}': rg.tune(f'lora_r{r}', rungs) for r in P['ranks']}
    sweeps.update(lora)
    fits.update(rg.fit_points_side_by_side(lora))
    fitted = {m: f for m, f in fits.items() if f is not None}
    optima, ratios, spread = bootstrap_optima(fitted) if fitted else ({}, {}, None)
    out.update(optima=optima, ratios=ratios, spread=spread, lora_grid_centre=ladder(centre))

    # attention only, at all-Linears rank R's trainable count
    per_rank = lambda t: lora_numbers_per_rank(base, t)
    q = round(R * per_rank(all_linears) / per_rank('attn.q,attn.v'))
    qv = f'qv_r{q}'
    rg.side_by_side([(qv, ladder(k), s0) for k in P['qv_rungs']], curve=False)
    sweeps[qv] = rg.tune(qv, P['qv_rungs'], curve=False)
    rg.side_by_side([(qv, sweeps[qv]['best'], s) for s in study.S.seeds], curve=False)
    rows = []
    for s in study.S.seeds:
        name, rec = rg.train(qv, sweeps[qv]['best'], s, curve=False)
        ev = study.test_eval(name, rg.ds)
        rows.append(
            {
                'seed': s,
                'name': name,
                'acc': {t: r['acc'] for t, r in ev.items()},
                'correct': {t: r['correct'] for t, r in ev.items() if 'correct' in r},
            }
        )
    out['qv'] = {'method': qv, 'rank': q, 'rows': rows}

    # forgetting: the base, then every mixture run
    mix = res['mixture']
    out['forgetting'] = {'base': rg.forgetting()}
    for m, mrows in mix.items():
        out['forgetting'][m] = []
        for row in mrows:
            out['forgetting'][m].append({'seed': row['seed'], **rg.forgetting(row['name'])})
    return out
