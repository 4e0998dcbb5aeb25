"""
Train a GPT: pretrain from scratch, fine-tune all weights, or train adapters (adapters.py) only.

    python train.py                                  # pretrain the default small model on the offline world
    python train.py config/finetune_mixture.py       # full fine-tuning of that base on the task mixture
    python train.py config/lora_mixture.py --lora_r=4 --max_iters=300
    python train.py --init_from=resume --out_dir=out/lora   # carry on where a run stopped
    python train.py --dataset=text --data_path=notes.txt --out_dir=out/notes   # your own text file

Every default below can be overridden by config files (plain Python assignments) and then by
--key=value arguments, in that order. A value is parsed as a Python literal and must have the type of
its default (an int is accepted for a float); anything else is refused with one line.

A run never replaces a checkpoint it did not write: a new run into an out_dir that holds a ckpt.pt
stops, unless it continues it (init_from='resume') or is told to replace it (overwrite=True). On
resume the checkpoint's own config wins; the schedule and bookkeeping keys (RESUMABLE) given again
are applied and printed, any other key given with another value than the checkpoint's is refused.
"""

import ast
import builtins
import io
import json
import math
import os
import sys
import time
import tokenize
import traceback
from contextlib import nullcontext
from types import SimpleNamespace

import torch

import adapters
import data
from formats.checkpoint import load_model, read_checkpoint, write_checkpoint
from formats.huggingface import HF_MODELS
from model import GPT, GPTConfig

# fmt: off
# -----------------------------------------------------------------------------
# defaults: the embedded run pretrains a small base model on the synthetic world in a few CPU minutes
# I/O
out_dir = 'out/base'     # where ckpt.pt (and eval.json) are written
init_from = 'scratch'    # 'scratch' | 'resume' (from out_dir) | a train.py checkpoint | a GPT-2 name or HF directory
overwrite = False        # let a new run replace the ckpt.pt of another run in out_dir (else it refuses)
eval_interval = 100      # iterations between validation losses (and checkpoints)
eval_iters = 20          # batches per validation loss estimate
log_interval = 10        # iterations between progress lines
always_save_checkpoint = True  # else save only when the validation loss improves
final_eval = True        # exact-match accuracy per task at the end (instruction datasets only)
eval_split = 'test'      # the split final_eval scores: 'test' | 'val'
eval_max_items = 200     # per task; 0 = all
# data
dataset = 'world'        # a name data.get_dataset knows: 'world', 'mixture', 'skill1', ... (see data.py)
tokenizer = 'world'      # 'world' (offline, owned by the project) | 'gpt2' (tiktoken)
data_dir = 'data'        # where datasets are built and cached
data_path = ''           # file or folder of a real-data dataset (text, shakespeare, alpaca, e2e); '' = data_dir/<name>
data_seed = 1337         # the synthetic world and its splits; `seed` below varies only init and batch order
e2e_train = 'trainset'   # E2E training rows: 'trainset' (42k, downloaded) | 'devset' (shipped; 10% of MRs validate)
e2e_delex = False        # E2E: name[] and near[] values as placeholders in MR and text, put back after decoding
batch_size = 32          # sequences per micro-batch
block_size = 128         # tokens per sequence (context length)
gradient_accumulation_steps = 1  # micro-batches per optimizer step
# model (used when init_from='scratch')
n_layer = 4              # transformer blocks
n_head = 4               # attention heads per block
n_embd = 256             # width of the residual stream
dropout = 0.0            # on attention and residual outputs (also applied to a loaded base)
bias = True              # biases in Linears and LayerNorms, as GPT-2
# adapters: '' trains every weight; otherwise only the adapter parameters train (adapters.py)
adapter = ''             # '' | 'lora' | 'multilora' | 'nola' | 'cat'
adapter_targets = 'attn.q,attn.v'  # comma-separated module names or patterns (W_q and W_v, as the GPT-2 papers)
cat_adapters = ''        # CAT: the skill LoRAs it composes, their train.py checkpoints, comma-separated
# adapter options: <method>_<option> (lora_r, nola_k, ...), defaults from adapters.py's classes
globals().update(adapters.OPTIONS)
# optimizer: AdamW, decay on matrices only
learning_rate = 1e-3     # peak learning rate
max_iters = 300          # total optimizer steps of the run (a resumed run counts from where it stopped)
epochs = 0.0             # if > 0, sets max_iters to this many passes over the training items (instruction datasets)
weight_decay = 0.1       # AdamW decoupled weight decay, on weight matrices only
beta1 = 0.9              # AdamW first-moment decay
beta2 = 0.99             # AdamW second-moment decay
grad_clip = 1.0          # over trainable parameters only; 0 disables
label_smoothing = 0.0    # of the cross-entropy targets; 0 = none
# learning rate: linear warmup, then a decay to min_lr at max_iters
decay_lr = True          # else a constant learning_rate
lr_schedule = 'cosine'   # the decay after warmup: 'cosine' | 'linear' (the LoRA paper's E2E recipe)
warmup_iters = 30        # iterations of linear warmup
min_lr = 1e-4            # where the cosine decay ends, at max_iters
# system
device = 'auto'          # 'auto' | 'cpu' | 'cuda' | 'cuda:1' | 'mps'
dtype = 'auto'           # 'auto' | 'float32' | 'bfloat16' | 'float16' (float16 uses a GradScaler)
compile = False          # torch.compile the model (worth it on a GPU, slow to start on a CPU)
peak_flops = 0.0         # for the MFU column: the device's peak FLOP/s; 0 = A100 bf16 (312e12) on CUDA, none on CPU
seed = 1337              # weight init, dropout and batch order
# -----------------------------------------------------------------------------
# fmt: on
DEFAULTS = {
    k: v
    for k, v in globals().items()
    if not k.startswith('_') and isinstance(v, (bool, int, float, str))
}


# what may differ on resume: the schedule, evaluation, bookkeeping and where it runs. Any other key
# (model shape, data, tokenizer, adapter, dtype, batch, seeds, ...) shapes what was trained, so a
# resumed run keeps the checkpoint's value and refuses a different one.
RESUMABLE = (
    'init_from',
    'out_dir',
    'overwrite',
    'data_dir',
    'data_path',
    'max_iters',
    'learning_rate',
    'min_lr',
    'warmup_iters',
    'decay_lr',
    'lr_schedule',
    'epochs',
    'weight_decay',
    'beta1',
    'beta2',
    'grad_clip',
    'eval_interval',
    'eval_iters',
    'log_interval',
    'always_save_checkpoint',
    'final_eval',
    'eval_split',
    'eval_max_items',
    'device',
    'compile',
    'peak_flops',
)


def given_options(argv):
    """The keys that config files and then --key=value arguments set, type-checked against the defaults."""
    given = {}

    def setkey(k, v, where):
        if k not in DEFAULTS:
            raise ValueError(f"unknown option {k!r} in {where} (python train.py --help lists them)")
        d = DEFAULTS[k]
        ok = isinstance(v, type(d)) and not (isinstance(v, bool) and not isinstance(d, bool))
        if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise ValueError(f"option {k} expects {type(d).__name__} but got {v!r} in {where}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"option {k} must be a finite number but got {v!r} in {where}")
        given[k] = v

    for arg in argv:
        if arg in ('-h', '--help'):
            print(help_text())
            sys.exit(0)
        if arg.startswith('--'):
            if '=' not in arg:
                raise ValueError(f"expected --key=value, got {arg!r}")
            k, v = arg[2:].split('=', 1)
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                pass  # a bare word is a string
            setkey(k, v, 'the command line')
        else:
            for k, v in run_config_file(arg).items():
                setkey(k, v, arg)
    return given


def run_config_file(path):
    """The names a config file assigns. Config files are trusted Python in this repo; an error in one is
    reported as one line naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found (see config/ for examples)")
    scope = {}
    try:
        with open(path, encoding='utf-8') as f:
            exec(
                builtins.compile(f.read(), path, 'exec'), {}, scope
            )  # (the option `compile` hides the builtin)
    except SyntaxError as e:
        raise ValueError(
            f"config file {path}, line {e.lineno}: {e.msg} (config files are plain Python assignments)"
        ) from None
    except Exception as e:
        line = [
            fr.lineno for fr in traceback.extract_tb(e.__traceback__) if fr.filename == path
        ] or ['?']
        raise ValueError(f"config file {path}, line {line[-1]}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in scope.items() if not k.startswith('_')}


def check_options(cfg):
    """The checks that involve a key's value, not only its type."""
    if cfg['adapter'] not in ('', *adapters.METHODS):
        raise ValueError(
            f"unknown adapter {cfg['adapter']!r}: choose '' (full training) or {', '.join(adapters.METHODS)}"
        )
    for k in (
        'batch_size',
        'block_size',
        'max_iters',
        'gradient_accumulation_steps',
        'eval_iters',
        'log_interval',
        'eval_interval',
    ):
        if cfg[k] <= 0:
            raise ValueError(f"option {k} must be positive, got {cfg[k]}")
    if cfg['lr_schedule'] not in ('cosine', 'linear'):
        raise ValueError(f"lr_schedule={cfg['lr_schedule']!r}: choose 'cosine' or 'linear'")
    if cfg['epochs'] < 0:
        raise ValueError(f"option epochs must be >= 0 (0: use max_iters), got {cfg['epochs']}")
    if cfg['data_path'] and cfg['dataset'] not in data.FILE_DATASETS:
        raise ValueError(
            f"data_path is read by the {', '.join(data.FILE_DATASETS)} datasets only, not by "
            f"dataset={cfg['dataset']!r}"
        )
    return cfg


def parse_args(argv):
    """Defaults <- config files <- --key=value; type-checked against the defaults."""
    return check_options({**DEFAULTS, **given_options(argv)})


def help_text():
    """The module docstring, then every key with its default and the comment beside it above (the
    adapter keys, made in a loop, are described by adapters.OPTION_HELP)."""
    notes, sections = dict(adapters.OPTION_HELP), {}
    with open(__file__, encoding='utf-8') as f:
        source = f.read()
    block = source[source.index('# I/O') : source.index('DEFAULTS = ')]
    key, section = None, None
    for tok in tokenize.generate_tokens(io.StringIO(block).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 0:
            key = tok.string
            sections.setdefault(key, section)
        elif tok.type == tokenize.COMMENT and tok.start[1] == 0:
            section, key = tok.string[1:].strip(), None
        elif tok.type == tokenize.COMMENT and key in DEFAULTS:
            notes[key] = tok.string[1:].strip()
        elif tok.type == tokenize.NEWLINE:
            key = None
    lines, shown = [__doc__.strip(), '', 'options, their defaults and what they do:'], None
    for k, v in DEFAULTS.items():
        if sections.get(k, shown) != shown:
            shown = sections[k]
            lines.append(f'# {shown}')
        lines.append(f'  --{k}={v!r}'.ljust(36) + ' ' + notes.get(k, ''))
    return '\n'.join(line.rstrip() for line in lines)


def pick_device_dtype(c):
    dev = c.device if c.device != 'auto' else 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(
            f"device={dev!r} but torch sees no CUDA GPU here: pass --device=cpu (or auto)"
        )
    dt = c.dtype
    if dt == 'auto':
        if dev.startswith('cuda'):
            dt = 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        else:  # bf16 autocast pays only where the CPU has bf16 instructions (README: 0.65x the fp32 step time)
            flags = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
            dt = 'bfloat16' if ('avx512_bf16' in flags or 'amx_bf16' in flags) else 'float32'
    if dt not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f"unknown dtype {dt!r}: choose auto, float32, bfloat16 or float16")
    if dt == 'bfloat16' and dev.startswith('cuda') and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "this GPU has no bf16: pass --dtype=float16 (or auto), which trains with a GradScaler"
        )
    return dev, dt


def lr_at(it, c):
    """Linear warmup for warmup_iters, then a cosine or linear decay to min_lr at max_iters."""
    if not c.decay_lr:
        return c.learning_rate
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    ratio = min(1.0, (it - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    if c.lr_schedule == 'linear':
        return c.learning_rate + ratio * (c.min_lr - c.learning_rate)
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c.learning_rate - c.min_lr)


def iters_for_epochs(c, ds):
    """max_iters for c.epochs passes over the training items (each optimizer step sees batch_size x
    gradient_accumulation_steps of them), rounded up."""
    if not hasattr(ds, 'train_tasks'):
        raise ValueError(
            f"epochs={c.epochs} needs an instruction dataset; {c.dataset} is a token stream: set max_iters"
        )
    n = sum(len(ds.data[t]['train']) for t in ds.train_tasks)
    return math.ceil(c.epochs * n / (c.batch_size * c.gradient_accumulation_steps))


def build_model(c, ds, ckpt):
    """Returns (model, base_info). base_info names the weights a fine-tune or adapter run started from."""
    if c.init_from == 'scratch':
        args = dict(
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            block_size=c.block_size,
            bias=c.bias,
            vocab_size=ds.vocab_size,
            dropout=c.dropout,
        )
        return GPT(GPTConfig(**args)), None
    if ckpt is not None and 'model' in ckpt:  # resuming a pretraining or full fine-tuning run
        model = GPT(GPTConfig(**ckpt['model_args']))
        model.load_state_dict(ckpt['model'])
        return model, ckpt.get('base')
    base_path = (
        ckpt['base']['path'] if ckpt is not None else c.init_from
    )  # resuming an adapter run: its base
    model, base_ckpt = load_model(base_path)
    # the tokenizer the base learned: a train.py checkpoint records it, GPT-2 by name is gpt2's, a directory can't say
    trained_with = (
        base_ckpt.get('data', {}).get('tokenizer')
        if base_ckpt
        else 'gpt2'
        if base_path in HF_MODELS
        else None
    )
    if trained_with and trained_with != c.tokenizer:
        raise ValueError(
            f"the base at {base_path} was trained with tokenizer={trained_with!r} but this run uses "
            f"{c.tokenizer!r}: pass --tokenizer={trained_with}"
        )
    base = {
        'path': os.path.abspath(base_path) if os.path.exists(base_path) else base_path,
        'fingerprint': model.fingerprint(),
    }
    if ckpt is not None and ckpt['base']['fingerprint'] != base['fingerprint']:
        raise ValueError(
            f"the base at {base_path} has changed since this adapter run began (fingerprint mismatch)"
        )
    if model.config.vocab_size < ds.vocab_size:
        raise ValueError(
            f"model vocabulary {model.config.vocab_size} < dataset vocabulary {ds.vocab_size}: "
            "the data was tokenized for another model (set tokenizer=...)"
        )
    if c.dropout != model.config.dropout:
        model.config.dropout = c.dropout
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = c.dropout
            if hasattr(m, 'dropout') and isinstance(m.dropout, float):
                m.dropout = c.dropout
    if c.block_size > model.config.block_size:
        raise ValueError(f"block_size={c.block_size} exceeds the model's {model.config.block_size}")
    return model, base


def save_checkpoint(path, model, optimizer, scaler, c, iter_num, best_val_loss, base, gen, ds):
    ckpt = {
        'model_args': vars(model.config).copy(),
        'optimizer': optimizer.state_dict(),
        'iter_num': iter_num,
        'best_val_loss': best_val_loss,
        'config': vars(c).copy(),
        'base': base,
        'rng': {
            'torch': torch.get_rng_state(),
            'data': gen.get_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        'data': {
            'dataset': c.dataset,
            'tokenizer': c.tokenizer,
            'fingerprint': getattr(ds, 'fingerprint', ''),
        },
    }
    if scaler is not None:
        ckpt['scaler'] = scaler.state_dict()
    if (
        c.adapter
    ):  # the adapter tensors only, in the one format adapters.load_adapter_checkpoint reads
        return adapters.save_adapter_checkpoint(path, model, **ckpt)
    ckpt['model'] = model.state_dict()
    write_checkpoint(
        ckpt, path
    )  # atomic: a crash or a full disk never destroys the last good checkpoint


def resume_config(ckpt, path, given):
    """The checkpoint's config with the RESUMABLE keys given again applied; any other given key must
    equal the checkpoint's value (keys newer than the checkpoint count as their defaults)."""
    saved = {**DEFAULTS, **ckpt['config']}
    for k, v in given.items():
        if k not in RESUMABLE and v != saved[k]:
            raise ValueError(
                f"{path} was trained with {k}={saved[k]!r}; a resumed run cannot change it to {v!r}: "
                f"drop --{k}, or start a new run with another --out_dir"
            )
    changed = {
        k: v
        for k, v in given.items()
        if k in RESUMABLE and v != saved[k] and k not in ('init_from', 'out_dir')
    }
    print(
        f"resuming {given['out_dir']} from iteration "
        f"{ckpt['iter_num']} (of max_iters {changed.get('max_iters', saved['max_iters'])})"
    )
    if changed:
        print('applying ' + ', '.join(f"{k}={v!r} (was {saved[k]!r})" for k, v in changed.items()))
    return check_options({**saved, **given, 'init_from': 'resume'})


def main(argv=()):
    given = given_options(list(argv))
    c = SimpleNamespace(**{**DEFAULTS, **given})
    ckpt_path = os.path.join(c.out_dir, 'ckpt.pt')
    ckpt = None
    if c.init_from == 'resume':
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"nothing to resume: no checkpoint at {ckpt_path}")
        ckpt = read_checkpoint(ckpt_path)
        if 'config' not in ckpt or 'optimizer' not in ckpt:
            raise ValueError(f"{ckpt_path} is not a train.py checkpoint: nothing to resume")
        c = SimpleNamespace(**resume_config(ckpt, ckpt_path, {**given, 'out_dir': c.out_dir}))
    else:  # (on resume the checks run on the checkpoint's config with the given keys applied)
        check_options(vars(c))
        if os.path.exists(ckpt_path) and not c.overwrite:
            raise ValueError(
                f"{ckpt_path} holds another run's checkpoint: pass another --out_dir, --init_from=resume "
                "to continue it, or --overwrite=True to replace it"
            )
    if os.path.exists(
        ckpt_path + '.tmp'
    ):  # a checkpoint write killed before its rename (kill -9, power loss)
        os.remove(ckpt_path + '.tmp')
        print(f"removed {ckpt_path}.tmp, a partial checkpoint left by an interrupted write")
    torch.manual_seed(c.seed)
    dev, dt = pick_device_dtype(c)
    device_type = 'cuda' if dev.startswith('cuda') else 'cpu'
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dt]
    autocast = (
        nullcontext() if dt == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
    )
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ds = data.get_dataset(
        c.dataset,
        c.block_size,
        tokenizer=c.tokenizer,
        data_dir=c.data_dir,
        seed=c.data_seed,
        **({'path': c.data_path} if c.data_path else {}),
        **({'e2e_train': c.e2e_train, 'e2e_delex': c.e2e_delex} if c.dataset == 'e2e' else {}),
    )
    if c.epochs > 0:
        c.max_iters = iters_for_epochs(c, ds)
        print(f"epochs={c.epochs:g}: max_iters={c.max_iters}")
    trained_on = ckpt.get('data', {}).get('fingerprint') if ckpt is not None else None
    if trained_on and trained_on != getattr(ds, 'fingerprint', trained_on):
        raise ValueError(
            f"the {c.dataset} data found now is not the data {ckpt_path} trained on (fingerprint "
            f"{ds.fingerprint} vs {trained_on}): point --data_dir or --data_path at that data"
        )
    model, base = build_model(c, ds, ckpt)
    if c.adapter:
        if (
            ckpt is None
        ):  # a new run: its <method>_<option> keys; CAT's skill LoRAs are read (and checked) first
            spec = {
                'method': c.adapter,
                'targets': c.adapter_targets,
                **{
                    k.split('_', 1)[1]: getattr(c, k)
                    for k in adapters.OPTIONS
                    if k.startswith(c.adapter + '_')
                },
            }
            if c.adapter == 'cat':
                spec['targets'], spec['skills'] = adapters.load_cat_skills(c.cat_adapters, model)
        else:  # resume: the checkpoint's own adapter config (a CAT run needs no skill files then)
            spec = ckpt['adapter']['config']
        print(adapters.add_adapters(model, **spec))
        if ckpt is not None:
            adapters.load_adapter_state_dict(model, ckpt['adapter']['state'])
    model.to(dev)
    params = [
        p for p in model.parameters() if p.requires_grad
    ]  # the frozen base never reaches the optimizer
    n_train, n_total = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    print(
        f"parameters: {n_total / 1e6:.2f}M total, {n_train:,} trainable ({100 * n_train / n_total:.2f}%)"
    )

    decay = [
        p for p in params if p.dim() >= 2
    ]  # matrices decay; biases, LayerNorms and 1-d coefficients do not
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {'params': decay, 'weight_decay': c.weight_decay},
            {'params': no_decay, 'weight_decay': 0.0},
        ],
        lr=c.learning_rate,
        betas=(c.beta1, c.beta2),
        fused=device_type == 'cuda',
    )
    scaler = torch.amp.GradScaler(device_type) if dt == 'float16' else None
    gen = torch.Generator().manual_seed(
        c.seed
    )  # batch sampling has its own RNG, saved in checkpoints
    iter_num, best_val_loss = 0, float('inf')
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
        for group, wd in zip(
            optimizer.param_groups, (c.weight_decay, 0.0)
        ):  # as applied on resume, not as saved
            group['weight_decay'], group['betas'] = wd, (c.beta1, c.beta2)
        if scaler is not None and 'scaler' in ckpt:
            scaler.load_state_dict(ckpt['scaler'])
        iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
        torch.set_rng_state(ckpt['rng']['torch'])
        gen.set_state(ckpt['rng']['data'])
        if ckpt['rng']['cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt['rng']['cuda'])
    fmodel = torch.compile(model) if c.compile else model
    os.makedirs(c.out_dir, exist_ok=True)

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters batches per split, on fixed batches (own generator: the training
        stream, and so resume, is untouched by evaluation)."""
        out, egen = {}, torch.Generator().manual_seed(c.seed + 1)
        fmodel.eval()
        for split in ('train', 'val'):
            losses = torch.zeros(c.eval_iters)
            for i in range(c.eval_iters):
                x, y = ds.get_batch(split, c.batch_size, egen)
                with autocast:
                    losses[i] = fmodel(x.to(dev), y.to(dev))[1].item()
            out[split] = losses.mean().item()
        fmodel.train()
        return out

    tokens_per_iter = c.gradient_accumulation_steps * c.batch_size * c.block_size
    print(f"tokens per iteration: up to {tokens_per_iter:,}; device {dev}, dtype {dt}")
    start_iter = last_log = iter_num
    saved_iter = (
        ckpt['iter_num'] if ckpt is not None else None
    )  # the iteration ckpt_path holds, once this run owns it

    def stop(what):  # a NaN or inf: say truthfully what is on disk
        kept = (
            f"last good checkpoint kept at {ckpt_path} (iteration {saved_iter})"
            if saved_iter is not None
            else f"no checkpoint was written ({ckpt_path} is still the earlier run's)"
            if os.path.exists(ckpt_path)
            else "no checkpoint was written"
        )
        return RuntimeError(
            f"{what} at step {iter_num}; stopped, {kept}; a smaller --learning_rate may help"
        )

    tokens = (
        0  # since the last log line: instruction batches are only as long as their longest item
    )
    val_loss, losses = None, []
    t_start = t_log = time.time()
    while True:
        lr = lr_at(iter_num, c)
        for group in optimizer.param_groups:
            group['lr'] = lr
        if iter_num % c.eval_interval == 0 or iter_num == c.max_iters:
            ev = estimate_loss()
            val_loss = ev['val']
            print(f"step {iter_num}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}")
            if not math.isfinite(val_loss):
                raise stop(f"validation loss is {val_loss}")
            if iter_num > start_iter and (c.always_save_checkpoint or val_loss < best_val_loss):
                best_val_loss = min(best_val_loss, val_loss)
                save_checkpoint(
                    ckpt_path, model, optimizer, scaler, c, iter_num, best_val_loss, base, gen, ds
                )
                saved_iter = iter_num
        if iter_num >= c.max_iters:
            break
        # forward / backward over gradient_accumulation_steps micro-batches, then one optimizer step
        for _ in range(c.gradient_accumulation_steps):
            x, y = ds.get_batch('train', c.batch_size, gen)
            tokens += x.numel()
            with autocast:
                _, loss = fmodel(
                    x.to(dev, non_blocking=True),
                    y.to(dev, non_blocking=True),
                    label_smoothing=c.label_smoothing,
                )
                loss = loss / c.gradient_accumulation_steps
            (scaler.scale(loss) if scaler else loss).backward()
        lossf = loss.item() * c.gradient_accumulation_steps
        if not math.isfinite(lossf):
            raise stop(f"loss is {lossf}")
        if c.grad_clip > 0:
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(lossf)
        iter_num += 1
        if iter_num % c.log_interval == 0 or iter_num == c.max_iters:
            t = time.time()
            dt_iter = (t - t_log) / (iter_num - last_log)
            tok_iter = tokens / (
                iter_num - last_log
            )  # tokens actually fed per iteration, padding included
            t_log, last_log, tokens = t, iter_num, 0
            eta = (c.max_iters - iter_num) * (t - t_start) / (iter_num - start_iter)
            # achieved FLOP/s per token: 6N + attention, or 4N + attention when only adapters train (frozen weights)
            flops = model.estimate_mfu(tok_iter, dt_iter, 1.0, frozen_weights=bool(c.adapter))
            peak = c.peak_flops or (312e12 if device_type == 'cuda' else 0)
            mfu = f", mfu {100 * flops / peak:.1f}%" if peak else ''
            print(
                f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {dt_iter * 1000:.1f} ms/iter, "
                f"{tok_iter / dt_iter:,.0f} tok/s, {flops / 1e9:.1f} GFLOP/s{mfu}, eta {eta:.0f}s"
            )

    elapsed = time.time() - t_start
    summary = {
        'iters': iter_num,
        'train_time_s': elapsed,
        'val_loss': val_loss,
        'best_val_loss': best_val_loss,
        'losses': losses,
        'trainable_params': n_train,
        'total_params': n_total,
    }
    print(f"done: {iter_num - start_iter} iterations in {elapsed:.1f}s; val loss {val_loss:.4f}")
    if not ds.tasks:  # a plain corpus: compare with what counting tokens alone achieves
        summary['unigram_entropy'] = unigram_entropy(ds, c)
        print(
            f"unigram entropy of the data {summary['unigram_entropy']:.4f} nats/token vs val loss {val_loss:.4f}"
        )
    elif c.final_eval:
        model.eval()
        with (
            adapters.merged(model),
            autocast,
        ):  # merged in fp32 first; then evaluated in the training precision
            summary['eval'] = ds.evaluate(
                model, split=c.eval_split, max_items=c.eval_max_items or None
            )
        print(data.format_results(summary['eval']))
        with open(os.path.join(c.out_dir, 'eval.json'), 'w') as f:
            json.dump(summary['eval'], f, indent=1)
    return summary


def unigram_entropy(ds, c, n_batches=50):
    """Entropy (nats) of the token frequencies, estimated on n_batches training batches: the loss of a
    model that knows only how often each token occurs."""
    gen = torch.Generator().manual_seed(c.seed + 2)
    ys = torch.cat([ds.get_batch('train', c.batch_size, gen)[1].view(-1) for _ in range(n_batches)])
    p = torch.bincount(ys[ys >= 0]).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


if __name__ == '__main__':
    sys.stdout.reconfigure(
        line_buffering=True
    )  # progress lines show up at once, also through | tee
    try:
        main(sys.argv[1:])
    except (
        ValueError,
        OSError,
        RuntimeError,
    ) as e:  # OSError: a missing file, no permission to write out_dir, ...
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
