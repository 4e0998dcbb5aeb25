"""
The small-scale study: do the seed papers' claims hold on the offline world, on a CPU?

    python -m study                  # every stage -> study/results/ (a fresh clone reuses runs/: 5 min)
    python -m study --stage=mixture  # one stage (and the finished runs it builds on)
    python -m study --quick          # every stage on tiny budgets: the CI smoke test
    python -m study --report         # re-render study/results/STUDY.md from study.json, no training

Stages (methods: docs/methods.md; data: sources/world.py's docstring):
 base         pretrain a base that knows its world (fact recall in the corpus's own wording, gated)
 mixture      the 12-task mixture: full fine-tuning, LoRA on W_q,W_v and on all Linears, MultiLoRA,
              LoRA rank 1, NOLA; a learning rate per method from a sweep on the validation split
              (seed 0), then every seed at that rate, exact match on every test item
 spectra      analyze.py on the mixture's updates at the tuned rates
 compression  NOLA with 4-bit coefficients vs full precision, bytes vs LoRA rank 1
 composition  LoRA Soups' Q/A bot on a manual: skill A reads the manual, skill B answers questions about
              known people; CAT, task arithmetic, ΔW averaging, TIES and data mixing on the composite
 control      shift-then-reverse, a two-hop composition: the skills, CAT and ΔW averaging (one seed)
 regret       study 3.1 (study/regret.py): LoRA Without Regret; LoRA Learns Less and Forgets Less
Every training run goes through train.main, as many side by side as there are cores (--workers), each on one
thread. Each finished run's numbers go to study/results/runs/<run>.json
(small, committed), keyed by its arguments and the base's fingerprint, with every number later measured on
its checkpoint: an interrupted study continues where it stopped, and a fresh clone (records, no
checkpoints) retrains only its base and rebuilds STUDY.md from the records. Verdicts, gates and the
write-up: study/verdicts.py.
"""

import argparse
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

import adapters
import analyze
import data
import train
from formats.checkpoint import load_model, read_checkpoint
from sources import world
from study import baselines, regret, regret_report
from study.verdicts import (
    UPPER_BOUND,
    format_gates,
    mean,
    most_common_answer_baseline,
    pm,
    verdicts,
    write_report,
)


def short_hash(obj):
    """16 hex digits of a JSON-able object's SHA-256: how a record names what it depends on."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_name(ckpt):
    """The study run whose checkpoint this is: out/<name>/ckpt.pt -> name."""
    return os.path.basename(os.path.dirname(ckpt))


def fit(argv, threads):
    """train.main(argv) on `threads` threads, its log in <out_dir>/train.log: its summary, less the loss curve.
    A function of its own, so that a worker process can run it (Study.train_side_by_side)."""
    out_dir = train.parse_args(argv)['out_dir']
    os.makedirs(out_dir, exist_ok=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with open(os.path.join(out_dir, 'train.log'), 'w') as f, contextlib.redirect_stdout(f):
            # --overwrite: a stale or --fresh run of the study's own
            summary = train.main(argv + ['--overwrite=True'])
    finally:
        torch.set_num_threads(before)
    summary.pop('losses', None)
    return summary


# the synthetic world every run trains and is evaluated on (data.get_dataset's seed)
WORLD_SEED = 1337
ALL = 'attn.q,attn.k,attn.v,attn.c_proj,mlp.c_fc,mlp.c_proj'  # every Linear of a block

# budgets, chosen by measurement: an 800-iteration base recalls 0.97 of its facts (a 500-iteration one 0.89);
# skill B learns known_qa in 600 iterations (0.87, seed 0); skill A, reading the augmented manual (16
# descriptions per person), recalls 0.64 of its facts after 600 iterations and 0.99 after 1,500, in every
# wording alike (study/results/probes/skill_a.jsonl); the upper bound, on the
# augmented manual, needs rank and iterations to extract what it read (docs/study.md, "the probes": rank 8
# reaches 0.29 / 0.73 composite val exact match after 1,000 / 3,000 iterations, rank 16 0.88 and rank 32
# 0.89 after 3,000, rank 32 0.84 after 2,000)
FULL = dict(
    seeds=[0, 1, 2],
    base_dir='out/study/base',
    base_args=['--max_iters=800', '--eval_interval=200'],
    R=12,
    mix_iters=1500,
    sweep_iters=1500,
    skill_iters={'manual': 1500, 'known_qa': 600},  # skill A, skill B
    datamix_iters=1200,
    upper_iters=3000,
    upper_rank=32,  # the skills' LoRAs are rank 8; the ceiling may hold more
    cat_iters=300,
    control_iters=900,  # each skill then passes its own gate: shift 0.980, reverse 0.995 (probe, seed 0)
    control_cat_iters=60,
    eval_iters=10,
    eval_items=0,
    lr_grid={'full': [1e-4, 3e-4, 1e-3], 'lora': [1e-3, 3e-3, 1e-2]},  # adapters: 'lora'
    cat_lr_grid=[3e-3, 1e-2, 3e-2],  # CAT's weights: one number per adapted matrix and skill
    comp_lr_grid=[1e-3, 3e-3, 1e-2],  # data mixing's LoRA
    lr_widen=2,  # a grid grows by up to this many rates past an edge its best rate sits on
    regret=regret.FULL,  # study 3.1's budgets (study/regret.py)
    out='out/study',
    results='study/results',
)
QUICK = dict(
    seeds=[0],
    base_dir='out/study-quick/base',
    base_args=[
        '--n_layer=2',
        '--n_head=2',
        '--n_embd=64',
        '--max_iters=40',
        '--eval_interval=40',
        '--eval_iters=2',
        '--batch_size=16',
        '--warmup_iters=4',
    ],
    R=12,
    mix_iters=6,
    sweep_iters=6,
    skill_iters={'manual': 6, 'known_qa': 6},
    datamix_iters=6,
    upper_iters=6,
    upper_rank=8,
    cat_iters=4,
    control_iters=4,
    control_cat_iters=2,
    eval_iters=2,
    eval_items=4,
    lr_grid={'full': [1e-3], 'lora': [3e-3, 1e-2]},
    cat_lr_grid=[1e-2, 3e-2],
    comp_lr_grid=[3e-3],
    lr_widen=0,
    regret=regret.QUICK,  # study 3.1 (study/regret.py)
    out='out/study-quick',
    results='out/study-quick/results',
)
COMPOSITION_LR, CAT_LR = 3e-3, 1e-2
# Every run's key holds the base's fingerprint, and the base's weights depend on how many threads summed
# its matmuls: the base trains on this many, whatever the machine or OMP_NUM_THREADS, so that a fresh clone
# on a CPU like ours rebuilds the very base of the records and reuses them.
BASE_THREADS = 2
# Every other run trains on one thread: full fine-tuning's numbers depend on the thread count too (LoRA's did
# not, measured), and runs on one thread each train side by side, one per core: two such on our 2 cores do
# 1.3x the work of one run on both (measured; docs/study.md).
RUN_THREADS = 1
# the cores this process may use (python -m study --workers' default)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
# tuned on the composite split
LAMBDAS = {
    'task arithmetic': [0.5, 0.75, 1.0, 1.25, 1.5],
    'TIES': [0.5, 1.0, 1.5, 2.0, 3.0],
}


def next_rate(lr, up):
    """lr's neighbour on the 1-3-10 ladder the grids are drawn from (..., 1e-3, 3e-3, 1e-2, 3e-2, ...)."""
    k = round(2 * math.log10(lr)) + (1 if up else -1)
    # the same float as the literal 3e-4, not 3 * 10 ** -4
    return float(f'{(1, 3)[k % 2]}e{k // 2}')


def tune_lr(grid, score, widen):
    """The rate with the best score(lr) (a tuple: higher is better) over grid, widening the grid one ladder
    step past whichever edge the best rate sits on, at most `widen` times: a best rate at the edge of a grid
    says the optimum may lie beyond it. Returns (the grid as swept, the best rate, {lr: score})."""
    return tune_lrs({None: grid}, lambda _, lr: score(lr), widen)[None]


def tune_lrs(grids, score, widen, ahead=lambda rates: None):
    """tune_lr for several grids {what: grid} at once, score(what, lr): each round, the rates every grid is
    about to score go to ahead([(what, lr), ...]) first (to train them side by side). {what: tune_lr's}."""
    grids, scores, best = {k: list(g) for k, g in grids.items()}, {k: {} for k in grids}, {}
    widening = list(grids)
    for _ in range(widen + 1):
        if not widening:
            break
        ahead([(k, lr) for k in widening for lr in grids[k] if lr not in scores[k]])
        for k in list(widening):
            grid = grids[k]
            scores[k].update({lr: score(k, lr) for lr in grid if lr not in scores[k]})
            best[k] = max(grid, key=scores[k].get)
            if len(grid) < 2 or best[k] not in (grid[0], grid[-1]):
                widening.remove(k)
            elif best[k] == grid[-1]:
                grids[k] = grid + [next_rate(best[k], up=True)]
            else:
                grids[k] = [next_rate(best[k], up=False)] + grid
    return {k: ([lr for lr in g if lr in scores[k]], best[k], scores[k]) for k, g in grids.items()}


def mixture_methods(R, n_embd):
    """name -> (config, extra options). All adapters but lora_qv adapt every Linear
    (lora_qv: the papers' GPT-2 setting)."""
    # NOLA: k + l = d per matrix, fewer trainable numbers than LoRA rank 1 at any width
    half = n_embd // 2
    # the same bases, kept: 2x faster on a CPU
    return {
        'full': ('config/finetune_mixture.py', []),
        f'lora_qv_r{R}': ('config/lora_mixture.py', [f'--lora_r={R}', f'--lora_alpha={2.0 * R}']),
        f'lora_r{R}': (
            'config/lora_mixture.py',
            [f'--adapter_targets={ALL}', f'--lora_r={R}', f'--lora_alpha={2.0 * R}'],
        ),
        f'multilora_3x{R // 3}': (
            'config/multilora_mixture.py',
            [
                f'--adapter_targets={ALL}',
                '--multilora_n=3',
                f'--multilora_r={R // 3}',
                f'--multilora_alpha={2.0 * (R // 3)}',
            ],
        ),
        'lora_r1': (
            'config/lora_mixture.py',
            [f'--adapter_targets={ALL}', '--lora_r=1', '--lora_alpha=2.0'],
        ),
        'nola': (
            'config/nola_mixture.py',
            [
                f'--adapter_targets={ALL}',
                f'--nola_k={half}',
                f'--nola_l={half}',
                '--nola_stored_basis=True',
            ],
        ),
    }


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
    return data.get_dataset(
        name, c['block_size'], tokenizer=c['tokenizer'], data_dir=c['data_dir'], seed=WORLD_SEED
    )


@torch.no_grad()
def recall(model, ds, probes, max_new=6):
    """Share of (prefix, value) probes whose greedy continuation of '<eot>prefix' starts with the value word
    (ds: any InstructDataset of the world, for its tokenizer and batched generation)."""
    model.eval()
    prompts = [[ds.stop_token] + ds.tokenizer.encode_ordinary(p) for p, _ in probes]
    outs = [ds.decode(y) for y in ds.generate(model, prompts, max_new)]
    hits = [o.strip().replace('.', ' ').split(' ')[0] == v for o, (_, v) in zip(outs, probes)]
    return sum(hits) / max(len(hits), 1)


def answer_rates(model, ds, task, split='test', max_items=None):
    """Per item of a Q/A task: exact match, format-correct (the answer is one value of the asked kind,
    whichever) and content-correct (the right value appears anywhere in what the model wrote)."""
    items = ds.data[task][split][:max_items]
    text = ds.text[task][split][: len(items)]
    max_new = min(max(len(a) for _, a in items) + 4, ds.block_size // 2)
    preds = [ds.decode(p).strip() for p in ds.generate(model, [p for p, _ in items], max_new)]
    valid = set(a for s in ds.text[task].values() for _, a in s) | set(
        world.MANUAL_JOBS + world.JOBS
    )
    valid |= set(
        a for t in ('known_qa',) if t in ds.text for s in ds.text[t].values() for _, a in s
    )
    em = [int(p == a) for p, (_, a) in zip(preds, text)]
    return {
        'em': em,
        'format': mean([p in valid for p in preds]),
        'content': mean([a in p.replace('.', ' ').split() for p, (_, a) in zip(preds, text)]),
        'examples': preds[:3],
    }


class Study:
    def __init__(self, S, fresh=False, log=print, workers=1):
        self.S, self.fresh, self.log = argparse.Namespace(**S), fresh, log
        # runs this invocation trained (--fresh retrains a run once, then reuses it); the runs the current
        # stage trained or reused (for its training-time line)
        self.trained, self.used, self.datasets = set(), set(), {}
        # how many runs train side by side (train_side_by_side); those that failed there: {name: (key, error)}
        self.workers, self.failed = workers, {}
        self.base_path = os.path.join(self.S.base_dir, 'ckpt.pt')
        self.runs_dir = os.path.join(self.S.results, 'runs')
        os.makedirs(self.runs_dir, exist_ok=True)

    # ---- running train.py, one small JSON per finished run --------------------------------------
    def job(self, name, argv):
        """A run as train.main gets it: (argv, key: what its record must match to be reused, the checkpoints it
        reads)."""
        argv = list(argv) + [
            f'--out_dir={os.path.join(self.S.out, name)}',
            f'--data_seed={WORLD_SEED}',
        ]
        # the data's fingerprint too: a world whose tasks changed (world.VERSION) trains its runs again
        key = {
            'argv': argv,
            'base': self.base_fp,
            'data': self.dataset(train.parse_args(argv)['dataset']).fingerprint,
        }
        # a run built on other runs' checkpoints (CAT composes the skills) keys on theirs: a retrained
        # skill retrains what composes it
        inputs = [p for a in argv if a.startswith('--cat_adapters=') for p in a[15:].split(',')]
        if inputs:
            key['inputs'] = {p: self.record_key_hash(run_name(p)) for p in inputs}
        return argv, key, inputs

    def finished(self, name, key, need_ckpt=False):
        """The run's record when it may be reused: the same key (with --fresh: and trained by this invocation,
        e.g. the sweep's run at the chosen rate, which is also seed 0's); None when it must train."""
        rec = None if self.fresh and name not in self.trained else self.record(name)
        if rec and rec['key'] == key and (not need_ckpt or os.path.exists(self.ckpt(name))):
            return rec
        return None

    def train(self, name, argv, need_ckpt=False):
        """train.main(argv) with its log in <out>/<name>/train.log and its numbers in results/runs/<name>.json,
        unless a finished run can be reused (Study.finished)."""
        argv, key, inputs = self.job(name, argv)
        rec = self.finished(name, key, need_ckpt)
        if rec is None:
            if name in self.failed and self.failed[name][0] == key:  # failed side by side
                raise self.failed[name][1]  # the same error, without training it again
            for p in inputs:  # training reads them
                self.checkpoint(run_name(p))
            rec = self.keep(name, key, fit(argv, RUN_THREADS))
        self.used.add(name)
        return rec

    def keep(self, name, key, summary):
        """A finished run's record, saved and logged."""
        rec = {'key': key, 'summary': summary}
        self.save_record(name, rec)
        self.trained.add(name)
        acc = summary.get('eval', {}).get('avg', {}).get('acc', float('nan'))
        self.log(
            f'  {name:<34} {summary["train_time_s"]:6.1f}s  val loss {summary["val_loss"]:.3f}  '
            f'{"val" if "--eval_split=val" in key["argv"] else "test"} acc {acc:.3f}'
        )
        return rec

    def train_side_by_side(self, runs):
        """Train those of runs [(name, argv), ...] that are not finished, self.workers at once, each in a process
        of its own on RUN_THREADS threads: the numbers Study.train would give, in less time. A later
        Study.train of each reads its record (or, for one that failed, raises its error)."""
        if self.workers < 2:
            return  # Study.train trains each where it is asked for
        todo = {}
        for name, argv in runs:
            argv, key, inputs = self.job(name, argv)
            if name not in todo and not self.finished(name, key) and name not in self.failed:
                for p in inputs:
                    self.checkpoint(run_name(p))
                todo[name] = (argv, key)
        if len(todo) < 2:
            return  # Study.train trains it where it is asked for
        ctx = multiprocessing.get_context('spawn')  # not fork: a forked OpenMP runtime may hang
        with ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=ctx) as pool:
            running = {
                pool.submit(fit, argv, RUN_THREADS): name for name, (argv, _) in todo.items()
            }
            for done in as_completed(running):
                name = running[done]
                key = todo[name][1]
                try:
                    self.keep(name, key, done.result())
                except Exception as e:  # e.g. diverged: Study.train raises it where it is asked for
                    self.failed[name] = (key, e)
                    self.log(f'  {name}: {type(e).__name__}: {e}')

    def record_key_hash(self, name):
        """A short hash of a finished run's key: what a number computed from its checkpoint depends on."""
        rec = self.record(name)
        if rec is None:
            raise FileNotFoundError(f'{self.ckpt(name)}: no finished study run wrote it')
        return short_hash(rec['key'])

    # ---- numbers computed once from checkpoints, kept in the records -----------------------------
    # A fresh clone has results/runs/ but no checkpoints (out/ is not committed): every number a stage
    # reads from a checkpoint is stored beside the run's record, so that the study's command rebuilds
    # STUDY.md from the records alone, and a checkpoint is retrained only for a number not yet there.
    def checkpoint(self, name):
        """out/<name>/ckpt.pt, retrained from its record's own arguments when it is gone."""
        if not os.path.exists(self.ckpt(name)):
            rec = self.record(name)
            if rec is None:
                raise FileNotFoundError(f'{self.ckpt(name)}: no finished study run wrote it')
            own = [
                a for a in rec['key']['argv'] if not a.startswith(('--out_dir=', '--data_seed='))
            ]
            self.train(name, own, need_ckpt=True)
        return self.ckpt(name)

    def cached(self, name, field, compute):
        """Field of run name's record, compute() stored there the first time. A retrained run's record
        starts without it, so the number always describes the checkpoint the record describes."""
        if field not in self.record(name):
            value = compute()
            rec = self.record(name)  # as saved: compute() may have retrained the checkpoint
            rec[field] = value
            self.save_record(name, rec)
        return self.record(name)[field]

    def derived(self, name, runs, compute, **params):
        """compute()'s value for several runs' checkpoints (a merge, their spectra), kept in runs/<name>.json
        keyed on the base, params and those runs' records, their training's summary included: a run
        trained again, even under the same arguments (--fresh, another thread count), recomputes it."""
        runs = {r: short_hash([self.record(r)['key'], self.record(r)['summary']]) for r in runs}
        key = {'base': self.base_fp, 'runs': runs, **params}
        rec = self.record(name)
        if rec is None or rec.get('key') != key:
            self.save_record(name, {'key': key, 'value': compute()})
        return self.record(name)['value']

    def record_names(self):
        return sorted(f[:-5] for f in os.listdir(self.runs_dir) if f.endswith('.json'))

    def record(self, name):
        path = os.path.join(self.runs_dir, name + '.json')
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def save_record(self, name, rec):
        path = os.path.join(self.runs_dir, name + '.json')
        with open(path + '.tmp', 'w') as f:
            json.dump(rec, f)
        os.replace(path + '.tmp', path)

    def run_args(self, config, seed, iters, extra=()):
        """A fine-tuning run's arguments: the study's evaluation settings, warmup a tenth of the budget."""
        S = self.S
        return [
            config,
            f'--init_from={self.base_path}',
            f'--seed={seed}',
            f'--max_iters={iters}',
            f'--warmup_iters={max(1, iters // 10)}',
            f'--eval_interval={iters}',
            f'--eval_iters={S.eval_iters}',
            f'--log_interval={max(1, iters // 5)}',
            f'--eval_max_items={S.eval_items}',
            *extra,
        ]

    def run(self, name, config, seed, iters, extra=()):
        return self.train(name, self.run_args(config, seed, iters, extra))

    def ckpt(self, name):
        return os.path.join(self.S.out, name, 'ckpt.pt')

    def base_model(self):
        return load_model(self.base_path)[0]

    def adapted(self, name):
        model = self.base_model()
        adapters.load_adapter_checkpoint(self.checkpoint(name), model)
        return model

    def finetuned(self, name):
        """The model a run trained: base + adapter, or the fully fine-tuned weights."""
        ckpt = self.checkpoint(name)
        return self.adapted(name) if 'adapter' in read_checkpoint(ckpt) else load_model(ckpt)[0]

    # ---- base -------------------------------------------------------------------------------------
    def stage_base(self):
        want = train.parse_args(
            self.S.base_args + [f'--out_dir={self.S.base_dir}', f'--data_seed={WORLD_SEED}']
        )
        ds = data.get_dataset(
            want['dataset'],
            want['block_size'],
            tokenizer=want['tokenizer'],
            data_dir=want['data_dir'],
            seed=want['data_seed'],
        )
        ignore = {
            'out_dir',
            'device',
            'compile',
            'log_interval',
            'final_eval',
            'eval_max_items',
            'eval_split',
            'overwrite',
        }
        reuse = False
        if os.path.exists(self.base_path) and not self.fresh:
            ck = read_checkpoint(self.base_path)
            old = train.saved_config(ck.get('config', {}))
            # adapters: not the base
            same_cfg = all(
                old[k] == v
                for k, v in want.items()
                if k not in ignore and not k.startswith(('lora_', 'multilora_', 'nola_', 'cat_'))
            )
            same_data = ck.get('data', {}).get('fingerprint') == ds.fingerprint
            reuse = (
                same_cfg and same_data and ck.get('iter_num') == want['max_iters'] and 'model' in ck
            )
            summary = {
                'reused': True,
                'iters': ck.get('iter_num'),
                'val_loss': ck.get('best_val_loss'),
            }
            self.log(
                f'  base at {self.base_path}: config {"same" if same_cfg else "differs"}, data fingerprint '
                f'{"same" if same_data else "differs"} -> {"reused" if reuse else "retrained"}'
            )
        if not reuse:
            summary = fit(
                self.S.base_args + [f'--out_dir={self.S.base_dir}', f'--data_seed={WORLD_SEED}'],
                BASE_THREADS,
            )
            summary['reused'] = False
            self.log(
                f'  base pretrained in {summary["train_time_s"]:.1f}s, val loss {summary["val_loss"]:.3f}'
            )
        base = self.base_model()
        self.base_fp = base.fingerprint()
        recorded = {r.get('key', {}).get('base') for r in map(self.record, self.record_names())}
        if self.base_fp not in recorded and recorded - {None}:
            self.log(
                f'  warning: the records in {self.runs_dir} were trained over another base '
                f"({', '.join(sorted(recorded - {None}))}, this one {self.base_fp}): every run trains again"
            )
        self.base_shape = {
            k: getattr(base.config, k)
            for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size')
        }
        people = self.world()['people']
        qa = self.dataset('known_qa')  # its tokenizer and batched generation, for the recall probes
        rec = {k: recall(base, qa, world.recall_probes(people, [k])) for k in world.FACT_TEMPLATES}
        rec['all'] = mean(list(rec.values()))
        # never read: ~0
        rec['manual'] = recall(base, qa, world.recall_probes(world.make_manual(self.world())))
        self.log(
            f'  base fact recall {rec["all"]:.3f} ('
            + ', '.join(f'{k} {v:.2f}' for k, v in rec.items())
            + ')'
        )
        return {
            'path': self.base_path,
            'fingerprint': self.base_fp,
            'data_fingerprint': ds.fingerprint,
            'model_args': self.base_shape,
            'params': sum(p.numel() for p in base.parameters()),
            'recall': rec,
            **summary,
        }

    def world(self):
        if not hasattr(self, '_world'):
            with open(os.path.join(data.build_world(seed=WORLD_SEED), 'world.json')) as f:
                self._world = json.load(f)
        return self._world

    # ---- mixture: a learning rate per method on the validation split, then every seed -----------
    def sweep_record(self, what, grid, best, runs, task, **extra):
        """A rate sweep's record (runs: {lr: run summary}; task: the eval entry whose exact match chose), logged."""
        acc = [runs[lr]['eval'][task]['acc'] for lr in grid]
        self.log(
            f'  {what}: lr {best:g} ({"" if task == "avg" else task + " "}val exact match '
            + ', '.join(f'{lr:g}: {a:.3f}' for lr, a in zip(grid, acc))
            + ')'
        )
        return {
            'grid': grid,
            **extra,
            'chosen': best,
            'val_acc': acc,
            'val_loss': [runs[lr]['val_loss'] for lr in grid],
        }

    def mixture_job(self, method, lr, seed, iters):
        """(name, arguments) of a mixture run."""
        config, extra = mixture_methods(self.S.R, self.base_shape['n_embd'])[method]
        extra = extra + [f'--learning_rate={lr}', f'--min_lr={lr / 10}', '--eval_split=val']
        if method == 'nola':
            extra.append(f'--nola_seed={seed}')
        name = f'mix_{method}_lr{lr:g}_it{iters}_s{seed}'
        return name, self.run_args(config, seed, iters, extra)

    def mixture_run(self, method, lr, seed, iters):
        name, argv = self.mixture_job(method, lr, seed, iters)
        return name, self.train(name, argv)

    def test_eval(self, name, ds):
        """Exact match on every test item (per item kept), stored beside the run's numbers."""

        def evaluate():
            with adapters.merged(model := self.finetuned(name)):
                return ds.evaluate(model.eval(), split='test', max_items=self.S.eval_items or None)

        return self.cached(name, 'test', evaluate)

    def sizes(self, name):
        """What the run's trained numbers take on disk: a file's bytes, and the tensors' payload alone."""

        def measure():
            state = read_checkpoint(self.checkpoint(name))
            state = state['adapter']['state'] if 'adapter' in state else state['model']
            return {'file_bytes': nbytes(state), 'payload_bytes': payload(state)}

        return self.cached(name, 'sizes', measure)

    def stage_mixture(self):
        S, ds = self.S, self.dataset('mixture')
        methods, s0 = mixture_methods(S.R, self.base_shape['n_embd']), S.seeds[0]
        runs = {m: {} for m in methods}  # each sweep's run summaries, {method: {lr: summary}}

        def score(method, lr):  # val exact match, ties broken by val loss
            summ = runs[method][lr] = self.mixture_run(method, lr, s0, S.sweep_iters)[1]['summary']
            return summ['eval']['avg']['acc'], -summ['val_loss']

        # every method's sweep (seed 0), then every seed at the chosen rates, each round side by side
        tuned = tune_lrs(
            {m: S.lr_grid['full' if m == 'full' else 'lora'] for m in methods},
            score,
            S.lr_widen,
            lambda rates: self.train_side_by_side(
                [self.mixture_job(m, lr, s0, S.sweep_iters) for m, lr in rates]
            ),
        )
        self.train_side_by_side(
            [self.mixture_job(m, tuned[m][1], s, S.mix_iters) for m in methods for s in S.seeds]
        )
        out, sweep = {}, {}
        for method, (grid, best, _) in tuned.items():
            sweep[method] = self.sweep_record(
                method, grid, best, runs[method], 'avg', iters=S.sweep_iters, seed=s0
            )
            rows = []
            for s in S.seeds:
                name, rec = self.mixture_run(method, best, s, S.mix_iters)
                ev, summ = self.test_eval(name, ds), rec['summary']
                rows.append(
                    {
                        'seed': s,
                        'name': name,
                        'lr': best,
                        'acc': {t: r['acc'] for t, r in ev.items()},
                        'correct': {t: r['correct'] for t, r in ev.items() if 'correct' in r},
                        'val_loss': summ['val_loss'],
                        'train_time_s': summ['train_time_s'],
                        'trainable_params': summ['trainable_params'],
                        **self.sizes(name),
                    }
                )
            self.log(f'  {method}: test exact match {pm([r["acc"]["avg"] for r in rows])}')
            out[method] = rows
        return out, sweep

    # ---- spectra and compression, on the mixture's runs ---------------------------------------
    def stage_spectra(self, mix):
        qv = next(m for m in mix if m.startswith('lora_qv'))

        def spectra(i, s, names):
            """One seed's aggregates (every method; LoRA on W_q,W_v against full fine-tuning on those two);
            the first seed also writes the figure and its numbers, labelled by this study's method names."""
            ckpts = [self.checkpoint(mix[m][i]['name']) for m in names]
            result, _, _ = analyze.run(
                self.base_path, ckpts, out=os.path.join(self.S.out, f'spectra_s{s}')
            )
            result_qv, _, _ = analyze.run(
                self.base_path,
                [self.checkpoint(mix[m][i]['name']) for m in (qv, 'full')],
                matrices='attn.q,attn.v',
                out=os.path.join(self.S.out, f'spectra_qv_s{s}'),
            )
            for m, r in zip(names, result['runs']):
                r['label'] = m
            out = {
                'all': {m: r['aggregate'] for m, r in zip(names, result['runs'])},
                'qv': {m: r['aggregate'] for m, r in zip((qv, 'full'), result_qv['runs'])},
            }
            if i == 0:
                files = analyze.write_outputs(result, os.path.join(self.S.results, 'spectra'))
                out.update(figure=files[1], table=analyze.format_table(result))
            return out

        per_seed = []
        for i, s in enumerate(self.S.seeds):
            names = [m for m in mix if m != qv]
            runs = [rows[i]['name'] for rows in mix.values()]
            compute = lambda i=i, s=s, names=names: spectra(i, s, names)
            per_seed.append(self.derived(f'spectra_s{s}', runs, compute, first=i == 0))
        keys = ('effective_rank_mean', 'top_share_mean', 'energy_rank_mean', 'rel_norm_mean')

        def summary(ps):
            out = {m: {k: [p[m][k] for p in ps] for k in keys} for m in ps[0]}
            for m in out:
                out[m]['intruders_0.5'] = [p[m]['intruders_per_matrix']['0.5'] for p in ps]
            return out

        return {
            'per_method': summary([p['all'] for p in per_seed]),
            'qv': summary([p['qv'] for p in per_seed]),
            'figure': per_seed[0]['figure'],
            'table_seed0': per_seed[0]['table'],
        }

    def stage_compression(self, mix):
        ds = self.dataset('mixture')

        def quantized(name):
            """The NOLA run's coefficients at 4 bits, loaded into a fresh base and scored on the test split."""
            model = self.adapted(name)
            sd_q = baselines.quantize_nola_state(adapters.adapter_state_dict(model))
            fresh = self.base_model()
            adapters.add_adapters(fresh, **adapters.adapter_config(model))
            adapters.load_adapter_state_dict(fresh, baselines.dequantize_nola_state(sd_q, fresh))
            with adapters.merged(fresh):
                ev = ds.evaluate(fresh.eval(), split='test', max_items=self.S.eval_items or None)
            return {
                'acc': {t: r['acc'] for t, r in ev.items()},
                'correct': {t: r['correct'] for t, r in ev.items() if 'correct' in r},
                'file_bytes': nbytes(sd_q),
                'payload_bytes': payload(sd_q),
            }

        rows = [
            {
                'seed': row['seed'],
                **self.cached(row['name'], 'nola_4bit', lambda n=row['name']: quantized(n)),
            }
            for row in mix['nola']
        ]
        pick = lambda m, k: [r[k] for r in mix[m]]
        entry = lambda m: {
            'acc': [r['acc']['avg'] for r in mix[m]],
            'file_bytes': pick(m, 'file_bytes'),
            'payload_bytes': pick(m, 'payload_bytes'),
            'trainable_params': mix[m][0]['trainable_params'],
        }
        return {
            'nola_fp32': entry('nola'),
            'lora_r1': entry('lora_r1'),
            'nola_4bit': {
                'acc': [r['acc']['avg'] for r in rows],
                'rows': rows,
                'file_bytes': [r['file_bytes'] for r in rows],
                'payload_bytes': [r['payload_bytes'] for r in rows],
                'trainable_params': mix['nola'][0]['trainable_params'],
            },
        }

    # ---- composition: LoRA Soups' Q/A bot on a manual ------------------------------------------
    def stage_composition(self):
        S, ds = self.S, self.dataset('manual_upper')  # evaluates known_qa and manual_qa
        n, s0 = S.eval_items or None, S.seeds[0]
        manual = world.recall_probes(world.make_manual(self.world()))[:n]
        rate = lambda lr: [f'--learning_rate={lr}', f'--min_lr={lr / 10}']
        lora = lambda lr, r=8: [
            f'--adapter_targets={ALL}', f'--lora_r={r}', f'--lora_alpha={2.0 * r}', '--weight_decay=0.0',
            *rate(lr),
        ]  # fmt: skip
        skills = lambda s: [  # training a CAT run brings them back (Study.train)
            f'--cat_adapters={self.ckpt(f"comp_manual_s{s}")},{self.ckpt(f"comp_known_qa_s{s}")}'
        ]
        # what each trained method is: (run name, dataset, iterations, config (None: a LoRA), CAT weighting)
        trained = {
            'skill A alone': ('manual', 'manual', S.skill_iters['manual'], None, None),
            'skill B alone': ('known_qa', 'known_qa', S.skill_iters['known_qa'], None, None),
            UPPER_BOUND: ('upper', 'manual_upper', S.upper_iters, None, None),
            'data mixing': ('mix', 'manual_mix', S.datamix_iters, None, None),
            'data mixing + composite split': ('mix_qa', 'manual_mix_qa', S.datamix_iters, None, None),
            'CAT': ('cat_plain', 'manual_qa', S.cat_iters, 'config/cat_composite.py', 'plain'),
            'CAT (softmax)': ('cat_softmax', 'manual_qa', S.cat_iters, 'config/cat_composite.py', 'softmax'),
        }  # fmt: skip
        swept = ('data mixing', 'data mixing + composite split', 'CAT', 'CAT (softmax)')

        def method_job(label, seed, lr):
            """(run name, arguments) of a composition run (a LoRA r=8 on every Linear unless said otherwise),
            its final eval on val"""
            what, dataset, iters, config, weights = trained[label]
            name = f'{what}_lr{lr:g}' if label in swept else what
            if config is None:  # a LoRA
                extra = lora(lr, S.upper_rank if label == UPPER_BOUND else 8) + [
                    f'--dataset={dataset}'
                ]
            else:  # CAT over this seed's two skills
                extra = [
                    f'--dataset={dataset}',
                    f'--cat_weights={weights}',
                    *skills(seed),
                    *rate(lr),
                ]
            argv = self.run_args(config or 'config/lora_skill1.py', seed, iters, extra)
            return f'comp_{name}_s{seed}', argv + ['--eval_split=val']

        def train_method(label, seed, lr):
            """-> (run name, its record)"""
            name, argv = method_job(label, seed, lr)
            return name, self.train(name, argv)

        def score(model, lam=None):
            with adapters.merged(model):
                model.eval()
                qa = answer_rates(model, ds, 'manual_qa', max_items=n)
                known = ds.evaluate(model, split='test', max_items=n, tasks=['known_qa'])
                return {
                    'manual_qa': mean(qa['em']),
                    'correct': qa['em'],
                    'format': qa['format'],
                    'content': qa['content'],
                    'known_qa': known['known_qa']['acc'],
                    'recall': recall(model, ds, manual),
                    'lambda': lam,
                    'examples': qa['examples'],
                }

        def tune(how, deltas, grid):
            """λ with the best exact match on the composite's validation split (people the test never asks
            about, whose facts are in the manual only), as CAT's and data mixing's rates are chosen."""
            best = None
            for lam in grid:
                model = baselines.apply_deltas(
                    self.base_model(), baselines.merge_deltas(deltas, how, lam=lam)
                )
                em = mean(
                    answer_rates(model.eval(), ds, 'manual_qa', split='val', max_items=n)['em']
                )
                if best is None or em > best[1]:
                    best = (lam, em, model)
            return score(best[2], best[0])

        # side by side: every seed's skills and upper bound, with data mixing's first sweep (seed s0); then
        # each swept method's rate, seed s0, by exact match on the composite's validation split (ties: val
        # loss; CAT composes seed s0's skills); then every seed at the chosen rates. The skills and the upper
        # bound keep the rate that taught them (COMPOSITION_LR).
        fixed = [label for label in trained if label not in swept]
        grids = {lb: S.cat_lr_grid if lb.startswith('CAT') else S.comp_lr_grid for lb in swept}
        self.train_side_by_side(
            [method_job(lb, s, COMPOSITION_LR) for lb in fixed for s in S.seeds]
            + [
                method_job(lb, s0, lr)
                for lb in swept
                if not lb.startswith('CAT')
                for lr in grids[lb]
            ]
        )
        for label in ('skill A alone', 'skill B alone'):  # before CAT's sweep, which composes them
            train_method(label, s0, COMPOSITION_LR)
        runs = {lb: {} for lb in swept}

        def val_score(label, lr):
            runs[label][lr] = train_method(label, s0, lr)[1]['summary']
            return runs[label][lr]['eval']['manual_qa']['acc'], -runs[label][lr]['val_loss']

        tuned = tune_lrs(
            grids,
            val_score,
            S.lr_widen,
            lambda rates: self.train_side_by_side([method_job(lb, s0, lr) for lb, lr in rates]),
        )
        lrs = {label: best for label, (_, best, _) in tuned.items()}
        sweeps = {
            label: self.sweep_record(label, grid, best, runs[label], 'manual_qa')
            for label, (grid, best, _) in tuned.items()
        }
        self.train_side_by_side([method_job(lb, s, lrs[lb]) for lb in swept for s in S.seeds])

        def merges(pair):
            """The merge baselines of one seed's two skills."""
            deltas = [baselines.lora_deltas(self.checkpoint(k)) for k in pair]
            mean_merge = baselines.merge_deltas(deltas, 'mean')
            # task arithmetic: W0 + λ (ΔA + ΔB), which merge_deltas' mean gives as 2λ · mean
            ta = tune('mean', deltas, [2 * lam for lam in LAMBDAS['task arithmetic']])
            ta['lambda'] /= 2
            return {
                'task arithmetic': ta,
                'ΔW averaging': score(baselines.apply_deltas(self.base_model(), mean_merge)),
                'TIES': tune('ties', deltas, LAMBDAS['TIES']),
            }

        runs = {k: [] for k in ('base', *trained, 'task arithmetic', 'ΔW averaging', 'TIES')}
        trainable = {'base': 0, 'task arithmetic': 0, 'ΔW averaging': 0, 'TIES': 0}
        base = self.derived(
            'comp_base', [], lambda: score(self.base_model()), items=n, data=ds.fingerprint
        )
        for s in S.seeds:
            for label in trained:
                name, rec = train_method(label, s, lrs.get(label, COMPOSITION_LR))
                measured = self.cached(
                    name, 'composition_score', lambda n=name: score(self.adapted(n))
                )
                runs[label].append({'seed': s, 'lr': lrs.get(label, COMPOSITION_LR), **measured})
                trainable[label] = rec['summary']['trainable_params']
            pair = [f'comp_{k}_s{s}' for k in ('manual', 'known_qa')]
            merged = self.derived(
                f'comp_merges_s{s}', pair, lambda pair=pair: merges(pair), lambdas=LAMBDAS
            )
            for label, r in merged.items():
                runs[label].append({'seed': s, **r})
            runs['base'].append({'seed': s, **base})
            for label in runs:
                r = runs[label][-1]
                self.log(
                    f'  s{s} {label:<30} composite {r["manual_qa"]:.3f} (format {r["format"]:.2f}, content '
                    f'{r["content"]:.2f})  known_qa {r["known_qa"]:.3f}  manual recall {r["recall"]:.3f}'
                )
        return {
            'runs': runs,
            'trainable': trainable,
            'sweeps': sweeps,
            'upper': {'rank': S.upper_rank, 'iters': S.upper_iters},
            'manual': {
                'descriptions': world.MANUAL_DESCRIPTIONS,
                'wordings': len(world.MANUAL_TEMPLATES['city']),
            },
            'baseline': most_common_answer_baseline(ds.text, S.eval_items or None)['manual_qa'],
            'sizes': {t: {k: len(v) for k, v in ds.text[t].items()} for t in ds.text},
        }

    # ---- control: shift-then-reverse, two hops ---------------------------------------------------
    def stage_control(self):
        """Each skill trained until it passes its own gate, so that CAT's score on the two-hop composite
        says what CAT composes, not what a half-learned skill lacks."""
        S, comp, s = self.S, self.dataset('composite'), self.S.seeds[0]
        it = S.control_iters
        skills = [f'ctl_skill{i}_it{it}_s{s}' for i in (1, 2)]
        configs = ('config/lora_skill1.py', 'config/lora_skill2.py')
        self.train_side_by_side([(n, self.run_args(c, s, it)) for n, c in zip(skills, configs)])
        for name, config in zip(skills, configs):
            self.run(name, config, s, it)
        skill = lambda i: self.ckpt(skills[i - 1])
        cat = self.run(
            f'ctl_cat_it{it}_s{s}',
            'config/cat_composite.py',
            s,
            S.control_cat_iters,
            [f'--cat_adapters={skill(1)},{skill(2)}'],
        )
        tasks = [data.SKILL1, data.SKILL2, data.COMPOSITE]

        def ev(model):
            with adapters.merged(model):
                r = comp.evaluate(model.eval(), split='test', max_items=S.eval_items or None)
            return {t: r[t]['acc'] for t in tasks}

        def measure():
            deltas = [baselines.lora_deltas(self.checkpoint(k)) for k in skills]
            mean_merge = baselines.merge_deltas(deltas, 'mean')
            return {
                'base': ev(self.base_model()),
                'skill1 alone': ev(self.adapted(skills[0])),
                'skill2 alone': ev(self.adapted(skills[1])),
                'ΔW averaging': ev(baselines.apply_deltas(self.base_model(), mean_merge)),
            }

        acc = self.derived('ctl_scores', skills, measure)
        acc = {**acc, 'CAT': {t: cat['summary']['eval'][t]['acc'] for t in tasks}}
        acc['ΔW averaging'] = acc.pop('ΔW averaging')  # the table's rows: CAT before the merge
        return {'tasks': tasks, 'seed': s, 'iters': it, 'acc': acc}

    def dataset(self, name):
        if name not in self.datasets:
            self.datasets[name] = world_dataset(name)
        return self.datasets[name]


# regret: study 3.1 (study/regret.py: its runs, analysis, verdicts and STUDY.md section)
STAGES = ('base', 'mixture', 'spectra', 'compression', 'composition', 'control', 'regret')


def run_stages(study, res, stages):
    """Run the named stages (base always: the others build on it), recording per stage the wall time and
    the training time its runs' records hold (what a fresh run of the stage costs, at the loads they met)."""
    for k in ('seconds', 'train_seconds', 'runs_per_stage'):
        res.setdefault(k, {})
    for stage in ['base'] + [s for s in stages if s != 'base']:
        study.log(f'stage {stage}')
        t0, study.used = time.time(), set()
        if stage == 'base':
            res['base'] = study.stage_base()
        elif stage == 'mixture':
            res['mixture'], res['lr'] = study.stage_mixture()
            res['baseline'] = most_common_answer_baseline(
                study.dataset('mixture'), study.S.eval_items or None
            )
        elif stage in ('spectra', 'compression', 'regret'):  # regret: study 3.1, study/regret.py
            if 'mixture' not in res:
                res['mixture'], res['lr'] = study.stage_mixture()
            if stage == 'regret':
                res[stage] = regret.stage(study, res, ALL)
                res[stage]['figures'] = regret_report.figures(
                    res[stage], res['mixture'], study.S.results
                )
            else:
                res[stage] = getattr(study, f'stage_{stage}')(res['mixture'])
        else:
            res[stage] = getattr(study, f'stage_{stage}')()
        res['seconds'][stage] = time.time() - t0
        if stage == 'base':
            recorded = [res['base'].get('train_time_s', 0.0)] if not res['base']['reused'] else []
        else:
            recorded = [study.record(n)['summary']['train_time_s'] for n in study.used]
        res['train_seconds'][stage], res['runs_per_stage'][stage] = sum(recorded), len(recorded)
        study.log(f'stage {stage}: {res["seconds"][stage]:.1f}s')
    return res


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

    for stage in STAGES + ('baseline', 'gates', 'verdicts'):
        if not res.get(stage):
            raise RuntimeError(f'stage {stage} produced no numbers')
        bad = list(walk(res[stage], stage))
        if bad:
            raise RuntimeError(
                f'stage {stage} produced non-finite numbers at {bad[0]} ({len(bad)} in all)'
            )


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='python -m study',
        description='The small-scale study of LoRA, MultiLoRA, NOLA and CAT.',
    )
    p.add_argument(
        '--quick', action='store_true', help='tiny budgets, every stage (the CI smoke test)'
    )
    p.add_argument(
        '--stage', choices=STAGES, help='run this stage only (with the finished runs it builds on)'
    )
    p.add_argument(
        '--fresh', action='store_true', help='retrain every run instead of reusing finished ones'
    )
    p.add_argument(
        '--workers',
        type=int,
        default=CORES,
        help='how many runs train at once, each on one thread (default: one per core this process may use)',
    )
    p.add_argument(
        '--out', help='where runs go (default out/study, or out/study-quick with --quick)'
    )
    p.add_argument(
        '--results',
        help='where STUDY.md, study.json, runs/ and the figure go (default study/results/)',
    )
    p.add_argument(
        '--report',
        action='store_true',
        help='only rewrite STUDY.md (verdicts recomputed) from study.json',
    )
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f'--workers={a.workers}: at least 1')
    S = dict(QUICK if a.quick else FULL)
    if a.out:
        S['out'] = a.out
        if a.quick:
            S['base_dir'] = os.path.join(a.out, 'base')
    if a.results:
        S['results'] = a.results
    path = os.path.join(S['results'], 'study.json')
    res = {}
    if os.path.exists(path) and (a.report or a.stage):
        with open(path) as f:
            res = json.load(f)
    if a.report and not res:
        raise FileNotFoundError(f'{path} not found: run python -m study first')
    if not a.report:
        t0 = time.time()
        log = lambda s: print(f'[{time.time() - t0:6.0f}s] {s}', flush=True)
        study = Study(S, fresh=a.fresh, log=log, workers=a.workers)
        res.update({'settings': S, 'torch_threads': torch.get_num_threads(), 'workers': a.workers})
        run_stages(study, res, [a.stage] if a.stage else STAGES)
        res['trained'] = len(study.trained)
        study.log(f'trained {res["trained"]} runs; reused the others from {study.runs_dir}')
        os.makedirs(S['results'], exist_ok=True)
    # STUDY.md needs every stage but study 3.1's (regret), whose section says so until it has run
    missing = [s for s in STAGES if s not in res]
    complete = not [s for s in missing if s != 'regret']
    if complete:
        # and res['gates']; regret_report.verdicts: study 3.1's claims rows
        res['verdicts'] = verdicts(res) + (regret_report.verdicts(res) if 'regret' in res else [])
    with open(path + '.tmp', 'w') as f:
        json.dump(res, f, indent=1)
    os.replace(path + '.tmp', path)
    if complete and a.quick:
        check(res)  # the smoke test: every stage produced finite numbers
    if complete:
        # regret_report.report_lines: study 3.1's section
        write_report(res, os.path.join(S['results'], 'STUDY.md'), regret_report.report_lines(res))
        print(f"wrote {S['results']}/STUDY.md and study.json")
        print_outcome(res)
    else:
        print(f"wrote {path}; STUDY.md waits for the stages not yet run: {', '.join(missing)}")
    return res


def print_outcome(res):
    for line in format_gates(res['gates']):
        print(line)
    for v in res['verdicts']:
        print(f"{v['paper']:<10} {v['verdict']}")


def cli(argv):
    try:
        main(argv)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # 130: killed by SIGINT
        print(
            'interrupted: every finished run is kept in its record; the same command goes on from there',
            file=sys.stderr,
        )
        sys.exit(130)
