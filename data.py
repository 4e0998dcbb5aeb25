"""
Data for nanoGPT-for-LoRA: the datasets get_dataset(name, block_size, ...) returns (DATASETS below),
over the synthetic world of sources/world.py or over the real files that sources/files.py reads; their
tokenizers; exact-match evaluation.

    python data.py            # builds data/world/ offline (seconds), lists the datasets and the tasks

Every instruction item is one prompt/answer pair, "Q: <question>\nA:" + " <answer>" + <|endoftext|>,
with the loss on the answer and the stop token only (targets are -1 on the prompt and padding); an
item whose question is '' is plain text, <|endoftext|> + "<text>" + <|endoftext|>, a loss on all but the first.
Tokenizers: 'world' (a small BPE that sources/world.py trains on the world's own corpus, committed as
data/world.tiktoken; 1024 ids), 'world-bytes' (plain bytes; 257 ids), 'gpt2' (tiktoken's own).
All three end answers with <|endoftext|>, the only special token.
Files the project writes (data/world.tiktoken, the world's folder, token caches) are checked when
read and rebuilt when damaged; files a user gives get a one-line error naming the file.
"""

import collections
import contextlib
import hashlib
import json
import os
import sys
import time

import numpy as np
import tiktoken
import torch

import metrics
from formats.checkpoint import write_error
from sources import world
from sources.files import (  # noqa: F401 (the readers stay data.read_*)
    DEFAULT_PATHS,
    delexicalise,
    e2e_delex_slots,
    e2e_slot_errors,
    read_alpaca,
    read_e2e,
    read_source,
    relexicalise,
)
from sources.world import COMPOSITE, FAMILIES, MIXTURE, SKILL1, SKILL2, TASK_FAMILY

# GPT-2's one special token ends every world document in pretraining and every answer in the tasks,
# so the stop token has a trained embedding before any fine-tuning (an adapter cannot train it)
EOT = '<|endoftext|>'
# GPT-2's split pattern, except that digits come one at a time so that arithmetic sees digits
PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# read from a file: get_dataset's path= (train.py's data_path)
FILE_DATASETS = (
    'text',
    'shakespeare',
    'alpaca',
    'e2e',
)
DATASETS = {  # name -> what get_dataset(name, ...) gives; python data.py prints this list
    'world': "the world's pretraining corpus, a plain token stream (nanoGPT .bin)",
    'mixture': 'the 12 instruction tasks of 3 families (MultiLoRA-style heterogeneous mixture)',
    'task:<name>': 'one task of the mixture or the skill set, or task:color_of (a spare outside the mixture)',
    'skill1': "LoRA-Soups skill 'shift': each letter to the next one (a fact the corpus teaches)",
    'skill2': "LoRA-Soups skill 'reverse': reverse a string of letters (a procedure)",
    'skills': 'skill1 + skill2 mixed (the data-mixing baseline)',
    'composite': "'shift_reverse', needs both skills; a small train split (for CAT weights); evaluates all 3",
    'manual': "skill A: a manual about new people, plain text (next-token loss on every token)",
    'known_qa': "skill B: Q/A about the corpus's people (city, job)",
    'manual_qa': "the composite: Q/A about the manual's people, a small train split; evaluates known_qa too",
    'manual_mix': 'manual + known_qa mixed (data mixing)',
    'manual_mix_qa': 'manual + known_qa + the composite split mixed',
    'manual_upper': "manual + manual_qa_ample: Q/A about half the manual's people (the upper bound)",
    'text': 'a plain-text file of yours (tiny-shakespeare style): --data_path=FILE',
    'shakespeare': 'tiny shakespeare, data/shakespeare/input.txt (downloaded when online)',
    'alpaca': 'Alpaca-format instruction JSON, data/alpaca/alpaca_data.json or --data_path=FILE',
    'e2e': 'E2E NLG (columns mr, ref): data/e2e/ (devset + test set shipped; trainset.csv a download)',
}

# -----------------------------------------------------------------------------------------------
# tokenizers

_TOKENIZERS = {}


def get_tokenizer(name='world'):
    """'world' (BPE on the world's corpus, 1024 ids), 'world-bytes' (256 bytes + the stop token), 'gpt2'."""
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]
    if name == 'gpt2':
        try:
            enc = tiktoken.get_encoding('gpt2')
        except Exception as e:
            import tempfile

            cache = os.environ.get('TIKTOKEN_CACHE_DIR') or os.path.join(
                tempfile.gettempdir(), 'data-gym-cache'
            )
            raise ValueError(
                f"tiktoken could not load 'gpt2' ({type(e).__name__}; offline?): run "
                f"tiktoken.get_encoding('gpt2') once with network, then copy its cache folder to "
                f"{cache} (or point TIKTOKEN_CACHE_DIR at it)"
            ) from None
    elif name in ('world', 'world-bytes'):
        ranks = world.tokenizer_ranks() if name == 'world' else {bytes([i]): i for i in range(256)}
        enc = tiktoken.Encoding(
            name, pat_str=PAT, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)}
        )
    else:
        raise ValueError(f"unknown tokenizer {name!r}: use 'world', 'world-bytes' or 'gpt2'")
    _TOKENIZERS[name] = enc
    return enc


# -----------------------------------------------------------------------------------------------
# token streams (nanoGPT .bin + meta.json)


def write_stream(folder, text, enc, tok_name, val_frac=0.05, docs=False):
    """Tokenise text into train.bin / val.bin (uint16, or uint32 for big vocabularies) + meta.json.
    docs=True: every line is a document, ended by the end-of-text token instead of its newline."""
    os.makedirs(folder, exist_ok=True)
    lines = text.splitlines(keepends=True)
    cut = len(lines) - max(1, int(len(lines) * val_frac))
    dtype = np.uint16 if enc.n_vocab < 2**16 else np.uint32
    meta = dict(tokenizer=tok_name, vocab_size=enc.n_vocab, dtype=np.dtype(dtype).name, tokens={})
    h = hashlib.sha256(tok_name.encode())
    for split, part in (('train', lines[:cut]), ('val', lines[cut:])):
        if docs:
            lines_ids = enc.encode_ordinary_batch([line.rstrip('\n') for line in part])
            ids = [i for line in lines_ids for i in line + [enc.eot_token]]
        else:
            ids = enc.encode_ordinary(''.join(part))
        ids = np.array(ids, dtype=dtype)
        tmp = os.path.join(folder, f'{split}.bin.{os.getpid()}.tmp')  # this writer's own name
        with open(tmp, 'wb') as f:  # a file object: a failed write keeps its errno (ENOSPC...)
            f.write(ids.tobytes())
        os.replace(tmp, os.path.join(folder, f'{split}.bin'))
        meta['tokens'][split] = int(len(ids))
        h.update(ids.tobytes())
    meta['fingerprint'] = h.hexdigest()[:16]
    tmp = os.path.join(folder, f'meta.json.{os.getpid()}.tmp')
    with open(tmp, 'w') as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(folder, 'meta.json'))
    return meta


@contextlib.contextmanager
def writing_data(data_dir):
    """Around a build into data_dir: an OSError (a full or read-only disk, data_dir under a file...)
    becomes one line naming the path and its real cause, and the partial files the build left
    (*.tmp, written since it began) are removed. A Ctrl-C removes them too."""
    began = time.time() - 1
    try:
        yield
    except BaseException as e:
        for root, _, files in os.walk(data_dir):
            for f in files:
                p = os.path.join(root, f)
                if f.endswith('.tmp') and os.path.getmtime(p) >= began:
                    os.remove(p)
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise OSError(f'{write_error(e, data_dir)}; no partial file was left') from None
        raise


def stream_damage(folder):
    """None if the token stream in folder is whole, else what is wrong: meta.json missing or unreadable,
    or a .bin whose size is not what meta.json records (a truncated copy, an interrupted write)."""
    path = os.path.join(folder, 'meta.json')
    try:
        with open(path) as f:
            meta = json.load(f)
        want = {s: meta['tokens'][s] * np.dtype(meta['dtype']).itemsize for s in ('train', 'val')}
    except FileNotFoundError:
        return f'{path} not found'
    except (ValueError, KeyError, TypeError):
        return f'{path} is not a meta.json that data.py wrote'
    for split, size in want.items():
        bin_path = os.path.join(folder, f'{split}.bin')
        have = os.path.getsize(bin_path) if os.path.exists(bin_path) else 0
        if have != size:
            return f'{bin_path} has {have} bytes where meta.json records {size}'
    return None


def write_stream_once(folder, text, enc, tok_name, **kw):
    """write_stream(folder, text(), ...) unless a whole stream is there; the project owns these caches,
    so a damaged one is rebuilt, with one line saying so."""
    damage = stream_damage(folder)
    if damage and os.path.exists(os.path.join(folder, 'meta.json')):
        print(f'{damage}: rebuilding the token cache {folder}', file=sys.stderr)
    if damage:
        write_stream(folder, text(), enc, tok_name, **kw)


def read_meta(folder, tok_name):
    path = os.path.join(folder, 'meta.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: prepare the data first (python data.py)')
    damage = stream_damage(folder)
    if damage:
        raise ValueError(f'{damage}: delete {folder} and prepare it again')
    with open(path) as f:
        meta = json.load(f)
    if meta.get('tokenizer') != tok_name:
        raise ValueError(
            f"{folder} was tokenised with {meta.get('tokenizer')!r} but tokenizer {tok_name!r} was "
            f"requested: delete {folder} to re-tokenise, or pass tokenizer={meta.get('tokenizer')!r}"
        )
    return meta


class StreamDataset:
    """A plain token stream: random block_size windows, every position a target (nanoGPT)."""

    tasks = []

    def __init__(self, folder, block_size, enc, tok_name, source=None):
        self.meta = read_meta(folder, tok_name)
        for split, part in (('train', 'first 90%'), ('val', 'last 10%')):
            n = self.meta['tokens'][split]
            if n <= block_size and source:  # a user's file: name it, and what it needs
                raise ValueError(
                    f"{source} is too short for block_size={block_size}: the {split} part (the "
                    f"{part} of its lines, at least one) has {n} tokens, and a training window needs "
                    f"{block_size + 1}: give a longer file (two lines or more), or a smaller --block_size"
                )
            if n <= block_size:
                raise ValueError(
                    f'{folder}/{split}.bin has {n} tokens, fewer than block_size+1 = {block_size + 1}'
                )
        if self.meta['vocab_size'] != enc.n_vocab:
            raise ValueError(
                f"{folder}/meta.json says vocab_size={self.meta['vocab_size']} but tokenizer "
                f"{tok_name!r} has {enc.n_vocab}: delete {folder} to re-tokenise"
            )
        self.folder, self.block_size, self.tokenizer = folder, block_size, enc
        self.vocab_size, self.stop_token = enc.n_vocab, None
        self.fingerprint = self.meta['fingerprint']

    def get_batch(self, split, batch_size, generator=None):
        # re-open the memmap every batch to avoid a memory leak (as nanoGPT does)
        data = np.memmap(
            os.path.join(self.folder, f'{split}.bin'), dtype=self.meta['dtype'], mode='r'
        )
        if len(data) <= self.block_size:
            raise ValueError(
                f'{self.folder}/{split}.bin has {len(data)} tokens, fewer than block_size+1'
            )
        ix = torch.randint(len(data) - self.block_size, (batch_size,), generator=generator).tolist()
        x = torch.stack(
            [torch.from_numpy(data[i : i + self.block_size].astype(np.int64)) for i in ix]
        )
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + self.block_size].astype(np.int64)) for i in ix]
        )
        return x, y

    def evaluate(self, model, split='val', max_items=None, batch_size=64):
        """Mean next-token loss over up to max_items (default 50) batches."""
        g = torch.Generator().manual_seed(0)
        was_training = model.training
        model.eval()
        dev = model_device(model)  # batches are built on the CPU; the model may sit on a GPU
        with torch.no_grad():
            losses = [
                model(*(t.to(dev) for t in self.get_batch(split, batch_size, g)))[1].item()
                for _ in range(max_items or 50)
            ]
        model.train(was_training)
        loss = sum(losses) / len(losses)
        return {'avg': {'acc': float('nan'), 'loss': loss, 'n': len(losses) * batch_size}}


# -----------------------------------------------------------------------------------------------
# instruction datasets: one item = prompt + answer + stop; loss on the answer only

PROMPT = 'Q: {q}\nA:'


class InstructDataset:
    """Prompt/answer items of several tasks. get_batch pads each batch to its longest item (not to
    block_size: items are short, and eval prompts see no other item in context either)."""

    def __init__(
        self, items, block_size, enc, tok_name, train_tasks, eval_tasks=None, mix='uniform'
    ):
        if mix not in ('uniform', 'proportional'):
            raise ValueError(
                f"mix={mix!r}: use 'uniform' (each task equally often) or 'proportional' (by size)"
            )
        self.tokenizer, self.block_size, self.vocab_size = enc, block_size, enc.n_vocab
        self.stop_token, self.mix = enc.eot_token, mix
        self.train_tasks, self.tasks = list(train_tasks), list(eval_tasks or train_tasks)
        self.text = {t: items[t] for t in set(self.train_tasks + self.tasks)}
        self.data = {}  # task -> split -> list of (prompt ids, answer ids incl. stop)
        h = hashlib.sha256(tok_name.encode())
        for t in sorted(self.text):
            self.data[t] = {}
            for split, pairs in self.text[
                t
            ].items():  # an empty question: plain text, loss on every token
                ps = [
                    [self.stop_token] if not q else p
                    for (q, _), p in zip(
                        pairs, enc.encode_ordinary_batch([PROMPT.format(q=q) for q, _ in pairs])
                    )
                ]
                ans = enc.encode_ordinary_batch([' ' + a if q else a for q, a in pairs])
                self.data[t][split] = [(p, a + [self.stop_token]) for p, a in zip(ps, ans)]
                h.update(json.dumps([t, split, ps, ans]).encode())
        self.fingerprint = h.hexdigest()[:16]
        self.check_block_size()
        self.cropped = self.report_cropping()

    def check_block_size(self):
        """collate keeps an item's answer whole (and crops its prompt from the left) as long as the
        answer, stop token included, fits in block_size; a longer answer loses its end, which can then
        be neither learned nor scored. Refused when that is most training items (block_size=1 on the
        mixture: a run that cannot learn anything), a notice when some."""
        sizes = [
            (len(a), len(p) + len(a) - 1)
            for t in self.train_tasks
            for p, a in self.data[t].get('train', [])
        ]
        cut = sum(n_answer > self.block_size for n_answer, _ in sizes)
        tasks = '+'.join(self.train_tasks) if len(self.train_tasks) < 4 else 'its tasks'
        whole = max((n for _, n in sizes), default=0)
        what = f"block_size={self.block_size} cuts the answer of {cut} of {len(sizes)} training items of {tasks}"
        if cut > len(sizes) / 2:
            raise ValueError(
                f"{what}: pass --block_size={whole} or more (the longest item needs {whole})"
            )
        if cut:
            print(
                f"notice: {what}: they train on their answers' first tokens only", file=sys.stderr
            )

    def report_cropping(self):
        """Items longer than block_size lose the start of their prompt (collate keeps the answer): never
        silently. One line per task and split that has such items; returns {(task, split): count}."""
        cropped = {}
        for t, splits in self.data.items():
            for split, items in splits.items():
                over = [len(p) + len(a) - 1 - self.block_size for p, a in items]
                over = [n for n in over if n > 0]
                if over:
                    cropped[(t, split)] = len(over)
                    print(
                        f'warning: {len(over)} of {len(items)} {t} {split} items are longer than '
                        f'block_size={self.block_size}: their prompts lose up to {max(over)} tokens '
                        f'from the left (raise block_size to {self.block_size + max(over)} to keep them)',
                        file=sys.stderr,
                    )
        return cropped

    def collate(self, pairs):
        """(x, y) for a list of (prompt, answer): y is the next token on answer positions, -1 elsewhere."""
        rows = []
        for p, a in pairs:
            # keep at least one prompt token; crop long prompts from the left
            a = a[: self.block_size]
            p = p[max(0, len(p) + len(a) - 1 - self.block_size) :]
            rows.append((p + a, len(p)))
        T = max(len(s) for s, _ in rows) - 1
        x = torch.full((len(rows), T), self.stop_token, dtype=torch.long)
        y = torch.full((len(rows), T), -1, dtype=torch.long)
        for i, (s, n_p) in enumerate(rows):
            s = torch.tensor(s[: T + 1])
            x[i, : len(s) - 1] = s[:-1]
            # the token after the last prompt token is the first answer token
            y[i, n_p - 1 : len(s) - 1] = s[n_p:]
        return x, y

    def get_batch(self, split, batch_size, generator=None):
        tasks = self.train_tasks
        if self.mix == 'uniform':
            ti = torch.randint(len(tasks), (batch_size,), generator=generator).tolist()
            pairs = [self.data[tasks[t]][split] for t in ti]
            pairs = [ps[torch.randint(len(ps), (1,), generator=generator).item()] for ps in pairs]
        else:
            pool = [p for t in tasks for p in self.data[t][split]]
            pairs = [
                pool[i]
                for i in torch.randint(len(pool), (batch_size,), generator=generator).tolist()
            ]
        return self.collate(pairs)

    @torch.no_grad()
    def evaluate(self, model, split='test', max_items=None, batch_size=64, tasks=None):
        """Exact match by greedy generation (left-padded batches) and answer-token loss, per task."""
        was_training = model.training
        model.eval()
        out = {}
        for t in tasks or self.tasks:
            items = self.data[t][split][:max_items]
            nll, n_tok = self.answer_loss(model, items, batch_size)
            # plain text: a loss, no answer to match
            if all(p == [self.stop_token] for p, _ in items):
                out[t] = {'loss': nll / max(n_tok, 1), 'n': len(items)}
                continue
            max_new = min(max(len(a) for _, a in items), self.block_size // 2)
            preds = self.generate(model, [p for p, _ in items], max_new, batch_size)
            # per item, in item order
            correct = exact_matches(preds, [a for _, a in items], self.stop_token)
            out[t] = {
                'acc': sum(correct) / max(len(correct), 1),
                'loss': nll / max(n_tok, 1),
                'n': len(items),
                'correct': correct,
            }
        model.train(was_training)
        out['avg'] = {
            k: sum(r[k] for r in out.values() if k in r) / max(sum(k in r for r in out.values()), 1)
            for k in ('acc', 'loss')
        }
        out['avg']['n'] = sum(r['n'] for r in out.values() if 'n' in r)
        return out

    def answer_loss(self, model, items, batch_size=64):
        """(summed cross-entropy, token count) over the answer tokens of items."""
        dev = model_device(model)  # batches are built on the CPU; the model may sit on a GPU
        nll = n_tok = 0.0
        for i in range(0, len(items), batch_size):
            x, y = self.collate(items[i : i + batch_size])
            logits, _ = model(x.to(dev))  # (B, T, V): model(x, y) gives them only where y counts
            nll += torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                y.to(dev).reshape(-1),
                ignore_index=-1,
                reduction='sum',
            ).item()
            n_tok += (y != -1).sum().item()
        return nll, n_tok

    def format_prompt(self, question):
        return PROMPT.format(q=question)

    def answer_text(self, ids, question):
        """The answer as text: the tokens before the stop token, decoded, stripped."""
        return self.decode(ids).strip()

    def generate(self, model, prompts, max_new, batch_size=64, **decoding):
        """Continuations of prompts (lists of ids), greedy unless `decoding` passes other
        model.generate options (num_beams, ...). Prompts sorted by length share left-padded batches
        of batch_size (little padding, few batches); a prompt longer than block_size - max_new loses
        its start. Returns the generated ids of each prompt, in order."""
        preds, keep = [None] * len(prompts), self.block_size - max_new
        if keep < 1:
            raise ValueError(
                f'{max_new} new tokens leave no room for a prompt in block_size={self.block_size}'
            )
        cropped = [len(p) - keep for p in prompts if len(p) > keep]
        if cropped:  # never silently
            print(
                f'warning: {len(cropped)} of {len(prompts)} prompts lose up to {max(cropped)} tokens '
                f'from the left to fit {max_new} new tokens in block_size={self.block_size}',
                file=sys.stderr,
            )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        decoding = {'temperature': 0.0, 'stop_token': self.stop_token, **decoding}
        for j in range(0, len(order), batch_size):
            rows = order[j : j + batch_size]
            T = min(max(len(prompts[i]) for i in rows), keep)
            x = torch.full((len(rows), T), self.stop_token, dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)  # 0 on the padding at the left
            for r, i in enumerate(rows):
                p = prompts[i][-keep:]
                x[r, T - len(p) :], mask[r, T - len(p) :] = torch.tensor(p), 1
            dev = model_device(model)
            y = model.generate(x.to(dev), max_new, attention_mask=mask.to(dev), **decoding)
            n, out = decoding.get('n_best', 1), y[:, T:].tolist()
            for r, i in enumerate(rows):  # n_best > 1: each prompt's n hypotheses, best first
                preds[i] = out[r] if n == 1 else out[r * n : (r + 1) * n]
        return preds

    def decode(self, ids):
        return self.tokenizer.decode(cut_at(ids, self.stop_token))


# -----------------------------------------------------------------------------------------------
# E2E NLG: scored per meaning representation against all of its references (BLEU, NIST, ROUGE-L, CIDEr)

# The decoding of microsoft/LoRA's examples/NLG (gpt2_beam.py), which the LoRA and NOLA numbers use
E2E_DECODING = {'num_beams': 10, 'length_penalty': 0.8, 'no_repeat_ngram_size': 4}
E2E_MAX_NEW_GPT2 = (
    64  # its cap on new GPT-2 tokens; other tokenizers get the longest training answer
)


def e2e_prompt(mr, delex=''):
    """The training template around an MR ('describe: ' added when it comes without), the slots delex
    names (the option e2e_delex, sources.files.e2e_delex_slots) delexicalised as the model was trained."""
    question = mr if mr.startswith('describe: ') else 'describe: ' + mr
    return PROMPT.format(q=delexicalise(question, None, delex)[0])


def e2e_answer(text, mr, delex=''):
    """Decoded text -> the answer: stripped, the MR's values of the slots delex names put back."""
    return relexicalise(text.strip(), mr, delex)


class E2EDataset(InstructDataset):
    """E2E rows as prompt/answer items for training (one row = one reference), and an evaluation that
    decodes each unique MR once and scores it against all of its references, as the E2E papers do.
    delex (the option e2e_delex: 'name,near', ...) trains on those slots' placeholders and puts the
    values back after decoding; self.delex holds the slots (a tuple, empty when off)."""

    def __init__(self, splits, block_size, enc, tok_name, delex='', mix='uniform'):
        self.delex = e2e_delex_slots(delex)
        self.row_questions = {s: [q for q, _ in pairs] for s, pairs in splits.items()}
        self.groups = {}  # split -> [(question, [references])], one per unique MR, first-seen order
        for split, pairs in splits.items():
            by_q = {}
            for q, a in pairs:
                by_q.setdefault(q, []).append(a)
            self.groups[split] = list(by_q.items())
        if self.delex:
            splits = {
                s: [delexicalise(q, a, self.delex) for q, a in pairs] for s, pairs in splits.items()
            }
        super().__init__({'e2e': splits}, block_size, enc, tok_name, ['e2e'], None, mix)
        longest = max(len(a) for _, a in self.data['e2e']['train'])
        self.decoding = {
            **E2E_DECODING,
            'max_new_tokens': E2E_MAX_NEW_GPT2 if tok_name == 'gpt2' else longest,
        }

    def format_prompt(self, question):
        return e2e_prompt(question, self.delex)

    def answer_text(self, ids, question):
        return e2e_answer(self.decode(ids), question, self.delex)

    def generate(self, model, prompts, max_new, batch_size=64, **decoding):
        """InstructDataset.generate; delexicalised, with beams, it reranks as TGen did: of each
        prompt's num_beams best hypotheses, the first with the fewest slot errors (e2e_slot_errors:
        an MR value it does not mention, a placeholder its MR lacks)."""
        n = decoding.get('num_beams', 1) if self.delex else 1
        if n == 1:
            return super().generate(model, prompts, max_new, batch_size, **decoding)
        hyps = super().generate(model, prompts, max_new, batch_size, n_best=n, **decoding)
        mrs = [self.tokenizer.decode(p) for p in prompts]  # the template around the (delex) MR
        return [
            min(h, key=lambda y: e2e_slot_errors(self.decode(y), mr)) for h, mr in zip(hyps, mrs)
        ]

    @torch.no_grad()
    def evaluate(self, model, split='test', max_items=None, batch_size=64, tasks=None, **decoding):
        """BLEU / NIST / ROUGE-L / CIDEr of the first max_items unique MRs of split (all by default),
        decoded as `decoding` says (default: E2E_DECODING), and the answer-token loss over their rows."""
        groups = self.groups[split][:max_items]
        questions = {q for q, _ in groups}
        rows = [
            it
            for it, q in zip(self.data['e2e'][split], self.row_questions[split])
            if q in questions
        ]
        was_training = model.training
        model.eval()
        nll, n_tok = self.answer_loss(model, rows, batch_size)
        preds = self.predict(model, [q for q, _ in groups], batch_size, **decoding)
        model.train(was_training)
        scores = metrics.score_all(preds, [refs for _, refs in groups])
        loss = nll / max(n_tok, 1)
        res = {**scores, 'loss': loss, 'n': len(groups), 'refs': sum(len(r) for _, r in groups)}
        res['predictions'] = preds
        return {'e2e': res, 'avg': {'acc': float('nan'), 'loss': loss, 'n': len(groups)}}

    def predict(self, model, questions, batch_size=64, **decoding):
        """The decoded answer text for each question (an MR with or without 'describe: ')."""
        decoding = {**self.decoding, **decoding}
        max_new = decoding.pop('max_new_tokens')
        prompts = self.tokenizer.encode_ordinary_batch([self.format_prompt(q) for q in questions])
        ids = self.generate(model, prompts, max_new, batch_size, **decoding)
        return [self.answer_text(y, q) for y, q in zip(ids, questions)]


def model_device(model):
    """Where the model's weights sit (the CPU for a stand-in model without any)."""
    return next((p.device for p in model.parameters()), torch.device('cpu'))


def cut_at(ids, stop):
    return ids[: ids.index(stop)] if stop in ids else ids


def exact_matches(preds, answers, stop):
    """1 per item whose tokens before the first stop token equal the answer's, else 0 (a prediction
    that never stops is wrong). Kept per item so that comparisons can be paired item by item."""
    if len(preds) != len(answers):
        raise ValueError(f'{len(preds)} predictions for {len(answers)} answers')
    return [
        int(stop in p and cut_at(list(p), stop) == cut_at(list(a), stop))
        for p, a in zip(preds, answers)
    ]


def accuracy(preds, answers, stop):
    ok = exact_matches(preds, answers, stop)
    return sum(ok) / max(len(ok), 1)


def format_results(results):
    """A table of evaluate()'s dict, with per-family means (E2E: its corpus scores)."""
    if 'BLEU' in results.get('e2e', {}):
        r = results['e2e']
        return (
            f"{'task':<8}{'BLEU':>8}{'NIST':>8}{'ROUGE_L':>9}{'CIDEr':>8}{'loss':>8}{'MRs':>6}{'refs':>6}\n"
            f"{'e2e':<8}{r['BLEU']:>8.4f}{r['NIST']:>8.4f}{r['ROUGE_L']:>9.4f}{r['CIDEr']:>8.4f}"
            f"{r['loss']:>8.3f}{r['n']:>6}{r['refs']:>6}"
        )
    lines = [f"{'task':<16}{'family':<15}{'acc':>7}{'loss':>8}{'n':>6}"]
    fam = collections.defaultdict(list)
    for t, r in results.items():
        if t == 'avg':
            continue
        if 'acc' in r:  # plain text has a loss only
            fam[TASK_FAMILY.get(t, '-')].append(r)
        lines.append(
            f"{t:<16}{TASK_FAMILY.get(t, '-'):<15}{r.get('acc', float('nan')):>7.3f}{r['loss']:>8.3f}{r['n']:>6}"
        )
    if len(fam) > 1:
        for f, rs in fam.items():
            lines.append(
                f"{'mean':<16}{f:<15}{sum(r['acc'] for r in rs) / len(rs):>7.3f}"
                f"{sum(r['loss'] for r in rs) / len(rs):>8.3f}{sum(r['n'] for r in rs):>6}"
            )
    a = results['avg']
    lines.append(f"{'avg':<16}{'':<15}{a['acc']:>7.3f}{a['loss']:>8.3f}{a['n']:>6}")
    return '\n'.join(lines)


# -----------------------------------------------------------------------------------------------
# the world on disk, and get_dataset


def build_world(data_dir='data', seed=1337, tokenizer='world', **opts):
    """world.write_world (corpus.txt, world.json, tasks.json), then its corpus as a token stream in
    <folder>/<tokenizer>/ (train.bin, val.bin, meta.json), written again when missing or damaged."""
    folder = world.write_world(data_dir, seed, **opts)

    def corpus():
        with open(os.path.join(folder, 'corpus.txt')) as f:
            return f.read()

    write_stream_once(
        os.path.join(folder, tokenizer), corpus, get_tokenizer(tokenizer), tokenizer, docs=True
    )
    return folder


def read_tasks(folder):
    """tasks.json of a built world; a damaged one (the project wrote it) makes write_world start over."""
    path = os.path.join(folder, 'tasks.json')
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        print(f'{path} is damaged: writing {folder} again', file=sys.stderr)
        os.remove(path)
        return None


def get_dataset(name, block_size, tokenizer=None, data_dir='data', seed=1337, **opts):
    """A dataset object (names: DATASETS). opts: world sizes (world.WORLD_DEFAULTS),
    mix ('uniform'|'proportional'), path (the file or folder of text, shakespeare, alpaca, e2e),
    e2e_train ('trainset' | 'devset': what E2E trains on, sources.files.read_e2e_folder) and
    e2e_delex (the slots given placeholders: 'name,near', ...; E2EDataset)."""
    tok_name = tokenizer or ('gpt2' if name in ('shakespeare',) else 'world')
    enc = get_tokenizer(tok_name)
    mix = opts.pop('mix', 'uniform')
    e2e_train, e2e_delex = opts.pop('e2e_train', 'trainset'), opts.pop('e2e_delex', '')
    if name == 'e2e':
        src = read_source(name, data_dir, seed, e2e_train=e2e_train, **opts)
        return E2EDataset(src, block_size, enc, tok_name, e2e_delex, mix)
    if name in FILE_DATASETS:
        src = read_source(name, data_dir, seed, **opts)
        if isinstance(src, dict):
            return InstructDataset({name: src}, block_size, enc, tok_name, [name], None, mix)
        folder = os.path.join(
            data_dir, f'{name}-{hashlib.sha256(src.encode()).hexdigest()[:16]}', tok_name
        )
        with writing_data(data_dir):
            # one cache per file content
            write_stream_once(folder, lambda: src, enc, tok_name, val_frac=0.1)
        source = opts.get('path') or os.path.join(data_dir, DEFAULT_PATHS.get(name, ''))
        return StreamDataset(folder, block_size, enc, tok_name, source=source)
    with writing_data(data_dir):
        folder = build_world(data_dir, seed, tok_name, **opts)
    if name == 'world':
        return StreamDataset(os.path.join(folder, tok_name), block_size, enc, tok_name)
    items = read_tasks(folder) or read_tasks(build_world(data_dir, seed, tok_name, **opts))
    train, evals = {
        'mixture': (MIXTURE, None),
        'skill1': ([SKILL1], None),
        'skill2': ([SKILL2], None),
        'skills': ([SKILL1, SKILL2], None),
        'composite': ([COMPOSITE], [SKILL1, SKILL2, COMPOSITE]),
        'manual': (['manual'], None),
        'known_qa': (['known_qa'], None),
        'manual_qa': (['manual_qa'], ['known_qa', 'manual_qa']),
        'manual_mix': (['manual', 'known_qa'], ['known_qa', 'manual_qa']),
        'manual_mix_qa': (['manual', 'known_qa', 'manual_qa'], ['known_qa', 'manual_qa']),
        'manual_upper': (['manual', 'manual_qa_ample'], ['known_qa', 'manual_qa']),
    }.get(name, (None, None))
    if train is None and name.startswith('task:') and name[5:] in items:
        train = [name[5:]]
    if train is None:
        raise ValueError(
            f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} (task:<{'|'.join(items)}>)"
        )
    return InstructDataset(items, block_size, enc, tok_name, train, evals, mix)


USAGE = 'usage: python data.py   (builds data/world/ offline in seconds, then lists the datasets and the tasks)'


def main(argv):
    if argv in (['-h'], ['--help']):
        return print(USAGE)
    if argv:
        print(f'data.py takes no arguments, got {" ".join(argv)!r}; {USAGE}', file=sys.stderr)
        sys.exit(2)
    t0 = time.time()
    enc = get_tokenizer('world')
    folder = build_world()
    ds = get_dataset('mixture', 256)
    meta = read_meta(os.path.join(folder, 'world'), 'world')
    corpus = os.path.getsize(os.path.join(folder, 'corpus.txt'))
    print(
        f"{folder} ready in {time.time() - t0:.1f}s: corpus {corpus / 1e6:.2f} MB, "
        f"{meta['tokens']['train']:,} train + {meta['tokens']['val']:,} val tokens "
        f"({corpus / sum(meta['tokens'].values()):.2f} bytes/token), tokenizer 'world' with {enc.n_vocab} ids"
    )
    print(f'\ndatasets ({len(DATASETS)}; train.py --dataset=NAME, data.get_dataset(NAME, ...)):')
    for name, what in DATASETS.items():
        print(f'  {name:<15}{what}')
    items = read_tasks(folder)
    spare = [t for t in items if TASK_FAMILY[t] == 'knowledge' and t not in MIXTURE]
    print(
        f"\ntasks ({len(items)}: the mixture's {len(MIXTURE)}, the spare {', '.join(spare)} (*), the "
        f"{len(FAMILIES['skills'])} skill and {len(FAMILIES['manual'])} manual tasks; --dataset=task:NAME picks one)"
    )
    print(f"{'task':<16}{'family':<15}{'train':>6}{'val':>6}{'test':>6}  example")
    for t, sp in items.items():
        q, a = sp['test'][0]
        sizes = ''.join(f"{len(sp[s]):>6}" for s in ('train', 'val', 'test'))
        print(f"{t:<16}{TASK_FAMILY[t] + (' *' if t in spare else ''):<15}{sizes}  {q!r} -> {a!r}")
    x, y = ds.get_batch('train', 1, torch.Generator().manual_seed(0))
    print(
        f"a training row: {enc.decode(x[0].tolist())!r}; its labels: {enc.decode(y[0][y[0] != -1].tolist())!r}"
    )


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
