"""
Sample from a trained model, decode a dataset split and score it, or score two files.

    python sample.py --ckpt=out/base/ckpt.pt --start="bemiso lies in"          # continue a prompt
    python sample.py --init_from=gpt2 --start=FILE:prompts.txt --num_samples=3   # one prompt per line
    python sample.py --ckpt=out/e2e_small/ckpt.pt --start="name[The Eagle], food[French]"
    python sample.py --ckpt=out/e2e_small/ckpt.pt --dataset=e2e --split=test   # decode + score
    python sample.py --score REFS PREDS                                         # score two files

--ckpt takes any train.py checkpoint: a full model, or an adapter, which is merged into the base it
names. A checkpoint trained on an instruction dataset formats each prompt with that dataset's
template (an E2E one also delexicalises the slots of its e2e_delex; True, in checkpoints older
than that option's slot list, means name,near), and prints the answers only.
--dataset=NAME --split=SPLIT decodes each unique prompt of the split once and writes
<folder>/<NAME>_<SPLIT>_predictions.txt (one line per prompt) and <NAME>_<SPLIT>_references.txt
(its references, a blank line between prompts: the plain-text formats of the official e2e-metrics
scripts), then prints BLEU, NIST, ROUGE-L and CIDEr (metrics.py) as one JSON object on the last line.
E2E decodes as microsoft/LoRA's examples/NLG by default: 10 beams, length penalty 0.8, no repeated
4-gram (options below override it); a delexicalised checkpoint then keeps, of the 10 best beams, the
first that misses the fewest MR values (data.E2EDataset.generate).
"""

import argparse
import json
import os
import sys
import time

import torch

import adapters
import data
import metrics
from formats.checkpoint import load_model, read_checkpoint
from sources.files import E2E_PLACEHOLDERS

STREAMS = ('world', 'text', 'shakespeare')  # plain-text datasets: a prompt is continued as it is


def get_args(argv):
    p = argparse.ArgumentParser(
        prog='sample.py',
        description=__doc__.strip().splitlines()[0],
        epilog='Examples and formats: see the top of sample.py and docs/e2e.md.',
    )
    src = p.add_argument_group('model (one of)')
    src.add_argument('--ckpt', default='', help='a train.py checkpoint: full model or adapter')
    src.add_argument(
        '--init_from', default='', help='GPT-2 weights: gpt2, gpt2-medium, ... or an HF directory'
    )
    what = p.add_argument_group('what to decode (one of)')
    what.add_argument(
        '--start',
        default='\n',
        help='the prompt, or FILE:path for one prompt per line (default: a newline)',
    )
    what.add_argument(
        '--dataset', default='', help='decode a split of this dataset (e2e, alpaca, mixture, ...)'
    )
    what.add_argument('--split', default='test', help="the split --dataset decodes: test | val")
    what.add_argument(
        '--score',
        nargs=2,
        metavar=('REFS', 'PREDS'),
        help='score a predictions file against a references file; no model',
    )
    dec = p.add_argument_group('decoding (unset: the dataset\'s reference decoding, else sampling)')
    dec.add_argument('--num_samples', type=int, default=1, help='samples per --start prompt')
    dec.add_argument(
        '--max_new_tokens', type=int, default=None, help='at most this many new tokens (default: '
        "E2E's reference, 64 GPT-2 tokens, else 200)",
    )  # fmt: skip
    dec.add_argument(
        '--temperature', type=float, default=None,
        help='0 = greedy; default 0.8 for --start, greedy (or beams) for --dataset',
    )  # fmt: skip
    dec.add_argument('--top_k', type=int, default=None, help='sample from the k likeliest tokens')
    dec.add_argument(
        '--top_p', type=float, default=None, help='sample from the likeliest tokens of mass top_p'
    )
    dec.add_argument(
        '--num_beams', type=int, default=None, help='beam search with this many beams (E2E: 10)'
    )
    dec.add_argument(
        '--length_penalty', type=float, default=None,
        help='beam score = sum log p / length**length_penalty (E2E: 0.8)',
    )  # fmt: skip
    dec.add_argument(
        '--no_repeat_ngram_size', type=int, default=None,
        help='no n-gram of this size twice in the generated tokens (E2E: 4; 0 = off)',
    )  # fmt: skip
    run = p.add_argument_group('run')
    run.add_argument('--seed', type=int, default=1337, help='torch seed for sampling')
    run.add_argument('--device', default='auto', help="'auto' | 'cpu' | 'cuda' | 'cuda:1' | 'mps'")
    run.add_argument(
        '--batch_size', type=int, default=8, help='prompts decoded together (x num_beams rows)'
    )
    run.add_argument(
        '--compile',
        action='store_true',
        help='torch.compile the one-token decode steps, after up to a minute of compiling: GPT-2 small '
        'decodes ~1.5x faster on a CPU, at ~1 GB more memory; the small E2E model ~10%% (docs/bench.md)',
    )
    run.add_argument(
        '--max_items', type=int, default=0, help='--dataset: the first N unique prompts; 0 = all'
    )
    run.add_argument(
        '--out_dir',
        default='',
        help="where --dataset writes its files (default: the ckpt's folder)",
    )
    run.add_argument(
        '--data_dir', default='', help="data folder (default: the checkpoint's data_dir)"
    )
    return p.parse_args(argv)


def load(args, device):
    """(model, info): a plain GPT for decoding (an adapter merged into its base) and what the
    checkpoint says about its data: dataset, tokenizer, the train.py config."""
    if bool(args.ckpt) == bool(args.init_from):
        raise ValueError('give a model: --ckpt=PATH (a train.py checkpoint) or --init_from=gpt2')
    if args.init_from:
        model, _ = load_model(args.init_from)
        return model.to(device).eval(), {'dataset': '', 'tokenizer': 'gpt2', 'config': {}}
    ckpt = read_checkpoint(args.ckpt)
    if 'adapter' in ckpt:  # the base it names, then the adapter folded into its weights
        base = (ckpt.get('base') or {}).get('path')
        if not base:
            raise ValueError(f'{args.ckpt}: an adapter checkpoint that names no base model')
        model, _ = load_model(base)
        adapters.load_adapter_checkpoint(args.ckpt, model)
        adapters.merge_and_unload(model)
    else:
        model, _ = load_model(args.ckpt)
    info = {**ckpt.get('data', {}), 'config': ckpt.get('config', {})}
    info.setdefault('tokenizer', 'world')
    return model.to(device).eval(), info


def decoding_options(args, dataset_default=None, sampling=True):
    """GPT.generate's keywords from the options; unset ones from the dataset's reference decoding
    (E2E) or, for free prompts, nanoGPT's sampling defaults."""
    d = dict(dataset_default or {})
    given = {
        k: getattr(args, k)
        for k in ('max_new_tokens', 'temperature', 'top_k', 'top_p', 'num_beams', 'length_penalty')
        + ('no_repeat_ngram_size',)
        if getattr(args, k) is not None
    }
    if 'temperature' in given and given['temperature'] > 0 and 'num_beams' not in given:
        d.pop('num_beams', None)  # asked to sample: no beams
    d.update(given)
    d.setdefault('max_new_tokens', 200)
    d.setdefault('temperature', 0.8 if sampling and d.get('num_beams', 1) == 1 else 0.0)
    if sampling and d['temperature'] > 0:
        d.setdefault('top_k', 200)
    for k, lo in (('num_beams', 1), ('max_new_tokens', 1), ('top_k', 1)):
        if d.get(k) is not None and d[k] < lo:
            raise ValueError(f'--{k} must be >= {lo}, got {d[k]}')
    if d.get('temperature', 0) < 0:
        raise ValueError(f"--temperature must be >= 0, got {d['temperature']}")
    return d


def read_prompts(start):
    if start.startswith('FILE:'):
        path = start[5:]
        with open(path, encoding='utf-8') as f:
            prompts = [line.rstrip('\n') for line in f if line.strip()]
        if not prompts:
            raise ValueError(f'{path} holds no prompt (one per line)')
        return prompts
    return [start]


def sample_prompts(model, info, args, device):
    """Continue each --start prompt --num_samples times; an instruction checkpoint answers it."""
    enc = data.get_tokenizer(info['tokenizer'])
    cfg, name = info['config'], info.get('dataset', '')
    instruct = bool(name) and name not in STREAMS
    dec = decoding_options(args, sampling=True)
    max_new = dec.pop('max_new_tokens')
    for prompt in read_prompts(args.start):
        if name == 'e2e':
            text = data.e2e_prompt(prompt, cfg.get('e2e_delex', ''))
        else:
            text = data.PROMPT.format(q=prompt) if instruct else prompt
        ids = enc.encode_ordinary(text) if text != '\n' or instruct else [enc.eot_token]
        room = model.config.block_size - max_new
        if room < 1:
            raise ValueError(
                f'--max_new_tokens={max_new} leaves no room for a prompt in block_size'
            )
        if len(ids) > room:
            print(
                f'warning: the prompt loses {len(ids) - room} tokens from the left', file=sys.stderr
            )
            ids = ids[-room:]
        x = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
        kw = generate_kwargs(dec)
        y = model.generate(x, max_new, stop_token=enc.eot_token, compile=args.compile, **kw)
        for row in y[:, len(ids) :].tolist():
            out = enc.decode(data.cut_at(row, enc.eot_token))
            if name == 'e2e':
                out = data.e2e_answer(out, prompt, cfg.get('e2e_delex', ''))
            print(out if instruct else text + out)
            print('---------------')


def generate_kwargs(dec):
    """GPT.generate's keywords: unset ones left out; the beam ones only where beams are asked for."""
    beam_only = () if dec.get('num_beams', 1) > 1 else ('num_beams', 'length_penalty')
    return {k: v for k, v in dec.items() if v is not None and k not in beam_only}


def decode_split(model, info, args, device):
    """Decode each unique prompt of --dataset's --split, write predictions and references, score."""
    cfg = info['config']
    name = args.dataset
    opts = {}
    if name == 'e2e':
        opts = {
            'e2e_train': cfg.get('e2e_train', 'trainset'),
            'e2e_delex': cfg.get('e2e_delex', ''),
        }
        # GPT-2 without a checkpoint: needs no trainset
        if opts['e2e_train'] == 'trainset' and not cfg:
            opts['e2e_train'] = 'devset'
    if cfg.get('data_path') and cfg.get('dataset') == name:
        opts['path'] = cfg['data_path']
    ds = data.get_dataset(
        name,
        model.config.block_size,
        tokenizer=info['tokenizer'],
        data_dir=args.data_dir or cfg.get('data_dir', 'data'),
        seed=cfg.get('data_seed', 1337),
        **opts,
    )
    if not hasattr(ds, 'tasks') or not ds.tasks:
        raise ValueError(f'--dataset={name} is plain text: nothing to decode and score')
    if args.split not in ('train', 'val', 'test'):
        raise ValueError(f"--split={args.split!r}: use test, val or train")
    if isinstance(ds, data.E2EDataset):
        groups, default = ds.groups[args.split], ds.decoding
    else:  # an instruction dataset: its tasks' prompts, each with its answers
        by_q = {}
        for t in ds.tasks:
            for q, a in ds.text[t][args.split]:
                by_q.setdefault(q, []).append(a)
        groups = list(by_q.items())
        default = {'max_new_tokens': max(len(a) for t in ds.tasks for _, a in ds.data[t]['train'])}
    groups = groups[: args.max_items or None]
    dec = decoding_options(args, default, sampling=False)
    max_new = dec.pop('max_new_tokens')
    kw = generate_kwargs(dec)
    print(f'decoding {len(groups)} {name} {args.split} prompts ({sum(len(r) for _, r in groups)} '
          f'references) with {json.dumps({"max_new_tokens": max_new, **kw})}', file=sys.stderr)  # fmt: skip
    preds, t0 = [], time.time()
    for i in range(0, len(groups), args.batch_size):
        chunk = [q for q, _ in groups[i : i + args.batch_size]]
        prompts = ds.tokenizer.encode_ordinary_batch([ds.format_prompt(q) for q in chunk])
        ids = ds.generate(model, prompts, max_new, args.batch_size, compile=args.compile, **kw)
        preds += [ds.answer_text(y, q) for y, q in zip(ids, chunk)]
        done, dt = len(preds), time.time() - t0
        eta = dt / done * (len(groups) - done)
        print(f'\r{done}/{len(groups)} decoded, {dt:.0f}s, eta {eta:.0f}s', end='', file=sys.stderr)
    print(file=sys.stderr)
    folder = args.out_dir or (os.path.dirname(os.path.abspath(args.ckpt)) if args.ckpt else 'out')
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f'{name}_{args.split}')
    metrics.write_predictions(stem + '_predictions.txt', preds)
    metrics.write_references(stem + '_references.txt', [refs for _, refs in groups])
    left = sum(ph in p for p in preds for ph in E2E_PLACEHOLDERS.values())
    print(
        f'wrote {stem}_predictions.txt and {stem}_references.txt in {time.time() - t0:.0f}s'
        + (f'; {left} placeholders had no value in their MR' if left else ''),
        file=sys.stderr,
    )
    scores = metrics.score_files(stem + '_references.txt', stem + '_predictions.txt')
    with open(stem + '_scores.json', 'w') as f:
        json.dump(scores, f, indent=1)
    print(json.dumps(scores))


def main(argv):
    args = get_args(argv)
    if args.score:
        if args.ckpt or args.init_from or args.dataset:
            raise ValueError('--score REFS PREDS scores two files: it takes no model or dataset')
        print(json.dumps(metrics.score_files(*args.score)))
        return
    torch.manual_seed(args.seed)
    device = (
        args.device if args.device != 'auto' else 'cuda' if torch.cuda.is_available() else 'cpu'
    )
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device={device} but torch sees no CUDA GPU here: pass --device=cpu')
    model, info = load(args, device)
    if args.dataset:
        decode_split(model, info, args, device)
    else:
        sample_prompts(model, info, args, device)


if __name__ == '__main__':
    sys.stdout.reconfigure(line_buffering=True)
    try:
        main(sys.argv[1:])
    except (ValueError, OSError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
