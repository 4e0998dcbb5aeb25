"""
train.py's checks of its options, made before any work (data build, model init, training): a value
that would run silently wrong, fail only after training, or cannot fit in memory is refused in one
line. Type checks happen as options are read (training/options.py).
"""

import os

import data
from formats.huggingface import HF_MODELS, read_hf_config
from formats.memory import refuse_if_too_big, training_bytes
from sources.world import TASK_FAMILY


def check_values(cfg):
    """Ranges and choices, checked before any work (building data, making the model, training): a
    value that would run silently wrong, or fail only after training, is refused here in one line."""
    if cfg['eval_split'] not in ('test', 'val'):
        raise ValueError(f"eval_split={cfg['eval_split']!r}: choose 'test' or 'val'")
    for k in ('n_layer', 'n_head', 'n_embd', 'learning_rate'):
        if cfg[k] <= 0:
            raise ValueError(f"option {k} must be positive, got {cfg[k]}")
    for k in (
        'warmup_iters',
        'eval_max_items',
        'min_lr',
        'weight_decay',
        'grad_clip',
        'peak_flops',
    ):
        if cfg[k] < 0:
            raise ValueError(f"option {k} must be 0 or more, got {cfg[k]}")
    for k in ('dropout', 'label_smoothing', 'beta1', 'beta2'):
        if not 0 <= cfg[k] < 1:
            raise ValueError(f"option {k} must be in [0, 1), got {cfg[k]}")
    if cfg['n_embd'] % cfg['n_head']:
        raise ValueError(
            f"n_embd={cfg['n_embd']} is not a multiple of n_head={cfg['n_head']}: each head gets "
            "n_embd / n_head dimensions"
        )
    if cfg['tokenizer'] not in ('world', 'world-bytes', 'gpt2'):
        raise ValueError(
            f"unknown tokenizer {cfg['tokenizer']!r}: use 'world', 'world-bytes' or 'gpt2'"
        )
    name = cfg['dataset']
    if name not in data.DATASETS and not (name.startswith('task:') and name[5:] in TASK_FAMILY):
        raise ValueError(
            f"unknown dataset {name!r}: use one of {', '.join(data.DATASETS)} "
            f"(task:<{'|'.join(TASK_FAMILY)}>)"
        )
    data.e2e_delex_slots(cfg['e2e_delex'])  # an unknown slot: one line naming the valid ones
    if cfg['cat_adapters'] and cfg['adapter'] != 'cat':
        raise ValueError(
            f"cat_adapters is read by adapter='cat' only, not by adapter={cfg['adapter']!r}"
        )


def check_cat_targets(c, skills_targets, default_targets):
    """CAT adapts what its skill LoRAs adapt; an adapter_targets given as anything else (it used to be
    ignored without a word) is refused, naming both."""
    skills = skills_targets if isinstance(skills_targets, str) else ','.join(skills_targets)
    if c.adapter_targets not in (default_targets, skills):
        raise ValueError(
            f"adapter=cat adapts what its skill LoRAs adapt ({skills}), not adapter_targets="
            f"{c.adapter_targets!r}: drop --adapter_targets"
        )


def check_own_inputs(cfg):
    """A run never writes over one of its own inputs, whatever overwrite says: --overwrite=True is
    for another run's checkpoint, and an adapter run into its base's out_dir would destroy its base."""
    outputs = [os.path.join(cfg['out_dir'], f) for f in ('ckpt.pt', 'eval.json')]
    cats = [p.strip() for p in cfg['cat_adapters'].split(',') if p.strip()]
    inputs = [('init_from', cfg['init_from']), ('data_path', cfg['data_path'])]
    for key, path in inputs + [('cat_adapters', p) for p in cats]:
        for out in outputs:
            if path and os.path.isfile(path) and os.path.realpath(path) == os.path.realpath(out):
                raise ValueError(
                    f"--{key}={path} is {out}, which this run writes: it would destroy its own "
                    "input, whatever --overwrite says; pass another --out_dir"
                )


def check_before_work(c, ckpt, dev, dt):
    """What can be checked only when the run starts (a config file may name a base that a run before
    it makes), before any data or model is built: init_from exists, and the sizes fit. A training step
    that cannot fit in this device's memory (formats/memory.py: the weights, their optimizer state,
    the batch, saved activations) is refused with the estimate. The model's shape is the options'
    (scratch), the resumed checkpoint's, or a GPT-2 directory's config.json; a base in a train.py
    checkpoint is measured as it loads."""
    init = c.init_from
    if init not in ('scratch', 'resume', *HF_MODELS) and not os.path.exists(init):
        raise ValueError(
            f"no checkpoint at {init}: init_from takes 'scratch', 'resume', a GPT-2 name "
            f"({', '.join(HF_MODELS)}), or an existing train.py checkpoint or GPT-2 directory"
        )
    if c.init_from == 'scratch':
        vocab = data.get_tokenizer(c.tokenizer).n_vocab
        args = dict(n_layer=c.n_layer, n_embd=c.n_embd, vocab_size=vocab, block_size=c.block_size)
    elif ckpt is not None and 'model_args' in ckpt and 'model' in ckpt:
        args = ckpt['model_args']
    elif ckpt is None and os.path.isdir(c.init_from):
        args = read_hf_config(c.init_from)
    else:
        return
    parts = training_bytes(
        args,
        c.batch_size,
        c.block_size,
        dtype_bytes=2 if dt in ('bfloat16', 'float16') else 4,
        full=not c.adapter,
    )
    refuse_if_too_big(
        f"a training step of batch_size={c.batch_size} x block_size={c.block_size} on a "
        f"{args['n_layer']}-layer, {args['n_embd']}-wide model",
        parts,
        dev,
        hint="lower batch_size (gradient_accumulation_steps keeps the tokens per step), "
        "block_size or the model's size",
    )
