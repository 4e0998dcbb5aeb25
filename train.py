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
One run per out_dir: a run holds out_dir/train.lock until it ends, and a second one refuses at once.
No run writes over its own input (init_from, cat_adapters, data_path), whatever overwrite says.
Every option is checked, and the memory a training step needs estimated, before any work begins.
Ctrl-C stops with one line naming the last checkpoint kept (exit status 130), leaving no partial file.
"""

import gc
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist

import adapters
import data
from formats.checkpoint import check_resumable, load_model, read_checkpoint, write_checkpoint
from formats.huggingface import HF_MODELS
from model import GPT, GPTConfig
from training import options
from training.checks import check_before_work, check_cat_targets, check_own_inputs, check_values
from training.device import (
    autocast_context,
    peak_flops_for,
    pick_device_dtype,
    start_distributed,
    wrap_ddp,
)
from training.run import RUN, releases_run_lock

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
e2e_delex = ''           # E2E: slots with placeholders, put back after decoding, beams reranked: 'name,near',... ''=off
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
# LoRA (adapters.LoRALinear): <method>_<option> keys, each default its class's (a test compares)
lora_r = 8               # rank of A (r, d_in) and B (d_out, r)
lora_alpha = 16.0        # scale s = alpha / r
lora_dropout = 0.0       # dropout on the adapter branch's input
lora_rslora = False      # scale s = alpha / sqrt(r) instead (rsLoRA)
# MultiLoRA (adapters.MultiLoRALinear)
multilora_n = 3          # number of parallel LoRA modules
multilora_r = 8          # rank of each module
multilora_alpha = 16.0   # scale s = alpha / r
multilora_dropout = 0.0  # dropout on the adapter branch's input
multilora_gate = 'scalar'  # 'scalar': one gate per module (our choice, the paper's figure) | 'channel': one per output
# NOLA (adapters.NOLALinear)
nola_k = 64              # number of random bases mixed into A (the paper's k)
nola_l = 64              # number of random bases mixed into B (the paper's l)
nola_r = 8               # rank of A and B
nola_alpha = 16.0        # scale s = alpha / r
nola_dropout = 0.0       # dropout on the adapter branch's input
nola_seed = 0            # the one seed of all bases (each module and factor derives its own)
nola_stored_basis = False  # keep the bases in memory: faster, more memory (else redrawn from the seeds)
nola_basis_device = 'cpu'  # draw the bases on 'cpu' (the same on every machine) or 'cuda' (fast on a GPU)
# CAT (adapters.CATLinear; the skill LoRAs are cat_adapters above)
cat_weights = 'plain'    # 'plain' (start at 1, the sum of the skills; our choice) | 'softmax' (the LoRA Soups code)
cat_seed = 0             # seed of the softmax weights' random start
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
peak_flops = 0.0         # MFU's denominator, FLOP/s; 0 = the GPU's 16-bit peak by name (GPU_PEAK_FLOPS), none on CPU
seed = 1337              # weight init, dropout and batch order
grad_checkpoint = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
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
RESUMABLE = '''
    init_from out_dir overwrite data_dir data_path max_iters learning_rate min_lr warmup_iters
    decay_lr lr_schedule epochs weight_decay beta1 beta2 grad_clip eval_interval eval_iters
    log_interval always_save_checkpoint final_eval eval_split eval_max_items device compile
    peak_flops grad_checkpoint
'''.split()


def given_options(argv):
    """The keys that config files and then --key=value arguments set, type-checked against DEFAULTS."""
    return options.given_options(argv, DEFAULTS, __file__)


def check_options(cfg):
    """The checks that involve a key's value, not only its type."""
    if cfg['adapter'] not in ('', *adapters.METHODS):
        raise ValueError(
            f"unknown adapter {cfg['adapter']!r}: choose '' (full training) or {', '.join(adapters.METHODS)}"
        )
    counts = 'batch_size block_size max_iters gradient_accumulation_steps eval_iters log_interval'
    for k in [*counts.split(), 'eval_interval']:
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
    check_values(cfg)
    check_own_inputs(cfg)
    return cfg


def parse_args(argv):
    """Defaults <- config files <- --key=value; type-checked against the defaults."""
    return check_options({**DEFAULTS, **given_options(argv)})


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
        try:
            model.load_state_dict(ckpt['model'])
        except RuntimeError:  # torch's message lists every key: one line instead
            raise ValueError(
                f"{os.path.join(c.out_dir, 'ckpt.pt')}: its weights do not fit its own model_args "
                "(a damaged or edited checkpoint): nothing to resume"
            ) from None
        return model, ckpt.get('base')
    # resuming an adapter run: its base
    base_path = ckpt['base']['path'] if ckpt is not None else c.init_from
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


def save_checkpoint(path, model, optimizer, scaler, c, iter_num, best_val_loss, base, rng, ds):
    """rng: the random streams' states (rng_states below), so that a resumed run draws what the
    uninterrupted run would have drawn."""
    ckpt = {
        'model_args': vars(model.config).copy(),
        'optimizer': optimizer.state_dict(),
        'iter_num': iter_num,
        'best_val_loss': best_val_loss,
        'config': vars(c).copy(),
        'base': base,
        'rng': rng,
        'data': {
            'dataset': c.dataset,
            'tokenizer': c.tokenizer,
            'fingerprint': getattr(ds, 'fingerprint', ''),
        },
    }
    if scaler is not None:
        ckpt['scaler'] = scaler.state_dict()
    # the adapter tensors only, in the one format adapters.load_adapter_checkpoint reads
    if c.adapter:
        return adapters.save_adapter_checkpoint(path, model, **ckpt)
    ckpt['model'] = model.state_dict()
    # atomic: a crash or a full disk never destroys the last good checkpoint
    write_checkpoint(ckpt, path)


def saved_config(config):
    """A checkpoint's config as today's options read it: keys newer than the checkpoint count as their
    defaults, and values an older version wrote otherwise are translated."""
    saved = {**DEFAULTS, **config}
    if isinstance(saved['e2e_delex'], bool):  # a checkpoint from before e2e_delex named its slots
        saved['e2e_delex'] = ','.join(data.e2e_delex_slots(saved['e2e_delex']))
    return saved


def resume_config(ckpt, path, given):
    """The checkpoint's config with the RESUMABLE keys given again applied; any other given key must
    equal the checkpoint's value (saved_config)."""
    saved = saved_config(ckpt['config'])
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


def draw_step(ds, c, gen, rank, world, dev):
    """This process's share of one optimizer step's batch, on the device: (pieces, tokens), each piece
    (x, y, share); tokens counts the whole step's tokens, all processes' and padding included.

    The batch of a step is gradient_accumulation_steps micro-batches of batch_size rows, drawn in
    order from ONE generator (seeded with `seed`; its state is saved in checkpoints). Every process
    holds the same generator and draws every micro-batch, then keeps its own rows: process r of N
    takes the r-th of N equal, contiguous shares of the step's rows (numbered micro-batch after
    micro-batch). So the batches never depend on N: with gradient_accumulation_steps a multiple of N
    the shares are whole micro-batches (nanoGPT's split), with fewer micro-batches than processes
    they are slices of one. `share` weights a piece's mean loss so that the processes' losses add up
    to the one-process loss (the mean over micro-batches of each one's mean token loss): the piece's
    counted tokens over its micro-batch's, times N, because DDP averages the gradients over N."""
    G, B = c.gradient_accumulation_steps, c.batch_size
    mine = range(rank * G * B // world, (rank + 1) * G * B // world)  # rows k * B + i of the step
    pieces, tokens = [], 0
    for k in range(G):
        x, y = ds.get_batch('train', B, gen)
        tokens += x.numel()
        lo, hi = max(mine.start - k * B, 0), min(mine.stop - k * B, B)
        if lo >= hi:
            continue  # another process's micro-batch, drawn only to keep the stream the same
        share = int((y[lo:hi] != -1).sum()) / int((y != -1).sum()) * world  # 1.0 in one process
        x, y = x[lo:hi], y[lo:hi]
        if dev.startswith('cuda'):  # from pinned memory the copy runs while the GPU computes
            x = x.pin_memory().to(dev, non_blocking=True)
            y = y.pin_memory().to(dev, non_blocking=True)
        pieces.append((x, y, share))
    return pieces, tokens


@torch.no_grad()
def estimate_loss(model, ds, c, dev, autocast):
    """Mean loss over eval_iters batches per split, on fixed batches (own generator: the training
    stream, and so resume, is untouched by evaluation). The losses stay on the device until the mean."""
    out, egen = {}, torch.Generator().manual_seed(c.seed + 1)
    model.eval()
    for split in ('train', 'val'):
        losses = torch.zeros(c.eval_iters, device=dev)
        for i in range(c.eval_iters):
            x, y = ds.get_batch(split, c.batch_size, egen)
            with autocast:
                losses[i] = model(x.to(dev), y.to(dev))[1]
        out[split] = losses.mean().item()
    model.train()
    return out


def nan_stop(what, step, ckpt_path, saved_iter):
    """The error that stops a run on a NaN or inf, saying truthfully what is on disk: saved_iter is the
    iteration ckpt_path holds since this run wrote or resumed it, else None."""
    kept = (
        f"last good checkpoint kept at {ckpt_path} (iteration {saved_iter})"
        if saved_iter is not None
        else f"no checkpoint was written ({ckpt_path} is still the earlier run's)"
        if os.path.exists(ckpt_path)
        else "no checkpoint was written"
    )
    return RuntimeError(
        f"{what} at step {step}; stopped, {kept}; a smaller --learning_rate may help"
    )


def read_losses(pending, iter_num, world, ckpt_path, saved_iter):
    """The step losses kept on the device since the last read (steps iter_num - len(pending) up to
    iter_num - 1) as floats: one host-device sync per log line, not one per step. Under DDP each
    process holds its share of a step's loss (draw_step); their mean is the loss of the whole batch.
    A NaN or inf stops the run here, naming the first step that produced one."""
    if not pending:
        return []
    step_losses = torch.stack(pending)
    if world > 1:
        dist.all_reduce(step_losses)
        step_losses /= world
    values = step_losses.tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise nan_stop(f"loss is {v}", iter_num - len(values) + i, ckpt_path, saved_iter)
    return values


def rng_states(data_state, world):
    """The random streams a checkpoint keeps: the batch stream (its state before the batch drawn ahead)
    and torch's generators, which draw the dropout masks. Under DDP each process has its own dropout
    stream: all of them are gathered (a collective: every process calls this) under 'ranks'."""
    own = {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    rng = {'data': data_state, **own}
    if world > 1:
        rng['ranks'] = [None] * world
        dist.all_gather_object(rng['ranks'], own)
    return rng


@releases_run_lock
def main(argv=()):
    # torchrun starts WORLD_SIZE processes of this script; the one of RANK 0 alone evaluates, logs and
    # writes checkpoints, the others train silently (their errors still reach stderr)
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    if rank > 0:
        sys.stdout = open(os.devnull, 'w')
    given = given_options(list(argv))
    out_dir = given.get('out_dir', DEFAULTS['out_dir'])
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    RUN.start(out_dir, ckpt_path)  # one run per out_dir, from here until main ends
    ckpt = None
    if given.get('init_from', DEFAULTS['init_from']) == 'resume':
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"nothing to resume: no checkpoint at {ckpt_path}")
        ckpt = read_checkpoint(ckpt_path)
        check_resumable(ckpt, ckpt_path)  # one line naming a missing field, not a KeyError later
        # the checkpoint's config with the given keys applied, and checked
        options = resume_config(ckpt, ckpt_path, {**given, 'out_dir': out_dir})
    else:
        options = check_options({**DEFAULTS, **given})
        if os.path.exists(ckpt_path) and not options['overwrite']:
            raise ValueError(
                f"{ckpt_path} holds another run's checkpoint: pass another --out_dir, --init_from=resume "
                "to continue it, or --overwrite=True to replace it"
            )
    c = SimpleNamespace(**options)
    torch.manual_seed(c.seed)
    dev, dtype = pick_device_dtype(c)
    check_before_work(c, ckpt, dev, dtype)  # init_from exists; sizes that cannot fit: refused now
    if world > 1:
        rows = c.gradient_accumulation_steps * c.batch_size
        if rows % world:
            raise ValueError(
                f"{world} processes cannot share a step's {rows} sequences (gradient_accumulation_steps"
                f" x batch_size) equally: make gradient_accumulation_steps a multiple of {world}"
            )
        dev = start_distributed(dev)
    device_type = dev.split(':')[0]  # 'cuda', 'mps' or 'cpu'
    autocast = autocast_context(dev, dtype)
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
        if ckpt is None:  # a new run: its <method>_<option> keys; CAT's skill LoRAs are read first
            spec = {
                'method': c.adapter,
                'targets': c.adapter_targets,
                **{k: getattr(c, f'{c.adapter}_{k}') for k in adapters.method_defaults(c.adapter)},
            }
            if c.adapter == 'cat':
                spec['targets'], spec['skills'] = adapters.load_cat_skills(c.cat_adapters, model)
                check_cat_targets(c, spec['targets'], DEFAULTS['adapter_targets'])
        else:  # resume: the checkpoint's own adapter config (a CAT run needs no skill files then)
            spec = ckpt['adapter']['config']
        print(adapters.add_adapters(model, **spec))
        if ckpt is not None:
            adapters.load_adapter_state_dict(model, ckpt['adapter']['state'])
    model.grad_checkpoint = c.grad_checkpoint
    model.to(dev)
    if rank > 0:  # its own dropout masks (rank 0 goes on with a single process's stream)
        torch.manual_seed(c.seed + rank)
    # a frozen base never reaches the optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    n_train, n_total = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    print(
        f"parameters: {n_total / 1e6:.2f}M total, {n_train:,} trainable ({100 * n_train / n_total:.2f}%)"
    )

    # matrices decay; biases, LayerNorms and 1-d coefficients do not
    decay = [p for p in params if p.dim() >= 2]
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
    scaler = torch.amp.GradScaler(device_type) if dtype == 'float16' else None
    gen = torch.Generator().manual_seed(c.seed)  # the batch stream, the same in every process
    iter_num, best_val_loss = 0, float('inf')
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
        # weight decay and betas as applied on resume, not as saved
        for group, wd in zip(optimizer.param_groups, (c.weight_decay, 0.0)):
            group['weight_decay'], group['betas'] = wd, (c.beta1, c.beta2)
        if scaler is not None and 'scaler' in ckpt:
            scaler.load_state_dict(ckpt['scaler'])
        iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
        gen.set_state(ckpt['rng']['data'])
        # each process's dropout stream; a process the saved run did not have keeps its fresh one
        saved = ckpt['rng'].get('ranks', [ckpt['rng']])
        if rank < len(saved):
            torch.set_rng_state(saved[rank]['torch'])
            if saved[rank]['cuda'] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved[rank]['cuda'])
    fmodel = torch.compile(model) if c.compile else model  # the forward that trains and evaluates
    train_model = wrap_ddp(fmodel, dev) if world > 1 else fmodel  # DDP averages the gradients
    os.makedirs(c.out_dir, exist_ok=True)

    tokens_per_iter = c.gradient_accumulation_steps * c.batch_size * c.block_size
    print(
        f"tokens per iteration: up to {tokens_per_iter:,}; device {dev}, dtype {dtype}"
        + (f", {world} processes" if world > 1 else '')
    )
    # FLOP/s per token: 6N + attention, or 4N + attention when only adapters train (frozen weights)
    flops_per_token = model.flops_per_token(frozen_weights=bool(c.adapter))
    peak_flops = peak_flops_for(dev, dtype, c.peak_flops)
    start_iter = last_log = iter_num
    saved_iter = ckpt['iter_num'] if ckpt is not None else None  # the iteration ckpt_path holds
    # the batch stream's state before the batch drawn ahead: what a checkpoint keeps
    data_state = gen.get_state()
    batch, batch_tokens = draw_step(ds, c, gen, rank, world, dev)
    pending = []  # step losses on the device, read at the next log line or evaluation
    # tokens since the last log line: instruction batches are only as long as their longest item
    tokens = 0
    # val_curve: (iteration, validation loss) at every evaluation
    val_loss, losses, val_curve = None, [], []
    t_start = t_log = time.time()
    RUN.progress(iter_num, saved_iter)  # for the line a Ctrl-C prints (save_checkpoint updates it)
    while True:
        lr = lr_at(iter_num, c)
        for group in optimizer.param_groups:
            group['lr'] = lr
        if iter_num % c.eval_interval == 0 or iter_num == c.max_iters:
            # the losses are checked before any checkpoint is written
            losses += read_losses(pending, iter_num, world, ckpt_path, saved_iter)
            pending = []
            rng = rng_states(data_state, world)
            if rank == 0:
                ev = estimate_loss(fmodel, ds, c, dev, autocast)
                val_loss = ev['val']
                val_curve.append((iter_num, val_loss))
                print(f"step {iter_num}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}")
                if not math.isfinite(val_loss):
                    what = f"validation loss is {val_loss}"
                    raise nan_stop(what, iter_num, ckpt_path, saved_iter)
                if iter_num > start_iter and (c.always_save_checkpoint or val_loss < best_val_loss):
                    best_val_loss = min(best_val_loss, val_loss)
                    args = (c, iter_num, best_val_loss, base, rng, ds)
                    save_checkpoint(ckpt_path, model, optimizer, scaler, *args)
                    saved_iter = iter_num
        if iter_num >= c.max_iters:
            break
        # forward / backward over this process's pieces of the step's batch, then one optimizer step
        step_loss = 0
        for i, (x, y, share) in enumerate(batch):
            last = i == len(batch) - 1
            if world > 1:  # the gradients are averaged across processes once, after the last piece
                train_model.require_backward_grad_sync = last
            with autocast:
                _, loss = train_model(x, y, label_smoothing=c.label_smoothing)
                loss = loss * share / c.gradient_accumulation_steps
            if last:  # the next step's batch is drawn while the device computes this forward
                data_state = gen.get_state()
                next_batch = draw_step(ds, c, gen, rank, world, dev)
            step_loss += loss.detach()  # no .item(): that would wait for the device every step
            (scaler.scale(loss) if scaler else loss).backward()
        pending.append(step_loss)
        tokens += batch_tokens
        batch, batch_tokens = next_batch
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
        iter_num += 1
        RUN.iter_num = iter_num
        if iter_num % c.log_interval == 0 or iter_num == c.max_iters:
            step_losses = read_losses(pending, iter_num, world, ckpt_path, saved_iter)
            pending = []
            losses += step_losses
            t = time.time()
            dt = (t - t_log) / (iter_num - last_log)  # seconds per iteration
            tok_iter = tokens / (iter_num - last_log)  # tokens fed per iteration, padding included
            t_log, last_log, tokens = t, iter_num, 0
            eta = (c.max_iters - iter_num) * (t - t_start) / (iter_num - start_iter)
            flops = flops_per_token * tok_iter / dt / world  # achieved FLOP/s of one device
            mfu = f", mfu {100 * flops / peak_flops:.1f}%" if peak_flops else ''
            print(
                f"iter {iter_num}: loss {step_losses[-1]:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                f"{tok_iter / dt:,.0f} tok/s, {flops / 1e9:.1f} GFLOP/s{mfu}, eta {eta:.0f}s"
            )

    elapsed = time.time() - t_start
    summary = {
        'iters': iter_num,
        'train_time_s': elapsed,
        'val_loss': val_loss,
        'best_val_loss': best_val_loss,
        'losses': losses,
        'val_curve': val_curve,
        'trainable_params': n_train,
        'total_params': n_total,
    }
    if world > 1:  # the processes part when all are here (rank 0 has written its checkpoint)
        # DDP's reducer holds the process group: freed first, the group's threads end inside
        # destroy_process_group, not during interpreter exit (where gloo can abort the process)
        del train_model
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
        if rank > 0:  # rank 0 alone reports and scores the run
            return summary
    print(f"done: {iter_num - start_iter} iterations in {elapsed:.1f}s; val loss {val_loss:.4f}")
    if not ds.tasks:  # a plain corpus: compare with what counting tokens alone achieves
        summary['unigram_entropy'] = unigram_entropy(ds, c)
        print(
            f"unigram entropy of the data {summary['unigram_entropy']:.4f} nats/token vs val loss {val_loss:.4f}"
        )
    elif c.final_eval:
        model.eval()
        # merged in fp32 first; then evaluated in the training precision
        with (
            adapters.merged(model),
            autocast,
        ):
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
    # progress lines show up at once, also through | tee
    sys.stdout.reconfigure(line_buffering=True)
    try:
        main(sys.argv[1:])
    except (
        ValueError,
        OSError,
        RuntimeError,
    ) as e:  # OSError: a missing file, no permission to write out_dir, ...
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C: one line saying what is kept; 130 = killed by SIGINT
        print(RUN.interrupted(str(e)), file=sys.stderr)
        sys.exit(130)
