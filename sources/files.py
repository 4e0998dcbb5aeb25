"""
Readers of real data files, each bad file a one-line error naming it and what to do: plain text,
Alpaca instruction JSON, E2E NLG CSV; a download when a known file is missing and there is network.
read_source gives what each file dataset is made of ('text', 'shakespeare', 'alpaca', 'e2e'), which
data.get_dataset tokenises (this module needs neither torch nor data.py).
"""

import csv
import io
import json
import os
import random

PATH_HINT = 'pass --data_path=FILE to train.py (path=FILE to data.get_dataset)'
URLS = {
    'shakespeare': 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
    'alpaca': 'https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json',
}
DEFAULT_PATHS = {
    'shakespeare': 'shakespeare/input.txt',
    'alpaca': 'alpaca/alpaca_data.json',
    'e2e': 'e2e',
}


def fetch(path, url=None):
    """path if it exists, else a download to path when there is network; one-line error otherwise."""
    if os.path.exists(path):
        return path
    if url is None:
        raise FileNotFoundError(f'{path} not found: put the file there, or {PATH_HINT}')
    try:
        import urllib.request

        with urllib.request.urlopen(url, timeout=15) as r:
            blob = r.read()
    except Exception as e:
        raise FileNotFoundError(
            f'{path} not found and {url} could not be downloaded ({type(e).__name__}): '
            f'put the file there, or {PATH_HINT}'
        ) from None
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'  # this writer's own name: two downloads never share one
    with open(tmp, 'wb') as f:
        f.write(blob)
    os.replace(tmp, path)
    return path


def read_text(path):
    """A data file's text, or one line naming the file and the first byte that is not UTF-8."""
    if os.path.isdir(path):
        raise ValueError(f'{path} is a folder, not a file: {PATH_HINT}')
    with open(path, 'rb') as f:
        blob = f.read()
    try:
        return blob.decode('utf-8')
    except UnicodeDecodeError as e:
        line = blob.count(b'\n', 0, e.start) + 1
        raise ValueError(
            f'{path} is not UTF-8 text (byte {e.start}, line {line}: {blob[e.start : e.start + 1]!r}): '
            f'save it as UTF-8'
        ) from None


ALPACA = 'Alpaca format: a JSON list of {"instruction", "input", "output"} strings'


def read_alpaca(path):
    """Alpaca JSON: a list of {instruction, input, output} -> [(question, answer)] ("input" may be absent)."""
    try:
        rows = json.loads(read_text(path).lstrip('\ufeff'))
    except json.JSONDecodeError as e:
        raise ValueError(
            f'{path} is not valid JSON ({e.msg} at line {e.lineno}): expected {ALPACA}'
        ) from None
    if not isinstance(rows, list):
        raise ValueError(f'{path}: expected {ALPACA}, got a JSON {type(rows).__name__}')
    for i, r in enumerate(rows):
        bad = None if isinstance(r, dict) else f'is {json.dumps(r)[:40]}, not an object'
        for k in ('instruction', 'input', 'output'):
            if not bad and k not in r and k != 'input':
                bad = f'has no "{k}"'
            elif not bad and not isinstance(r.get(k, ''), str):
                bad = f'has "{k}": {json.dumps(r[k])[:40]}, not a string'
        if bad:
            raise ValueError(f'{path}: item {i} {bad} ({ALPACA}): fix or remove that item')
    return [
        (
            r['instruction'].strip()
            + ('\n' + r['input'].strip() if r.get('input', '').strip() else ''),
            r['output'].strip(),
        )
        for r in rows
    ]


def read_e2e(path):
    """E2E NLG CSV (columns mr, ref) -> [(question, answer)]: the meaning representation in, text out."""
    reader = csv.DictReader(io.StringIO(read_text(path).lstrip('\ufeff'), newline=''), strict=True)
    pairs, line = [], 0
    try:
        if not reader.fieldnames or not {'mr', 'ref'} <= set(reader.fieldnames):
            raise ValueError(
                f'{path}: expected a CSV with columns mr,ref (E2E NLG), got {reader.fieldnames}: '
                f'start it with the header line mr,ref'
            )
        line = reader.line_num
        for r in reader:
            if r['ref'] is None:
                raise ValueError(
                    f'{path} line {reader.line_num}: the row has no ref: give every row an mr and a ref'
                )
            pairs.append((f"describe: {r['mr'].strip()}", r['ref'].strip()))
            line = reader.line_num
    except csv.Error as e:  # the row after `line` opens a quote it never closes, or misplaces one
        raise ValueError(
            f'{path} line {line + 1}: {e} (a bad quote?): close each quoted field, '
            f'writing a quote inside it as ""'
        ) from None
    return pairs


def split_by_question(pairs, seed, frac=0.05, cap=500):
    """Deterministic train/val/test split in which a question never lands in two splits."""
    qs = sorted({q for q, _ in pairs})
    random.Random(seed).shuffle(qs)
    n = max(1, min(cap, int(frac * len(qs))))
    where = {q: 'val' if i < n else 'test' if i < 2 * n else 'train' for i, q in enumerate(qs)}
    out = {'train': [], 'val': [], 'test': []}
    for q, a in pairs:
        out[where[q]].append((q, a))
    return out


def read_source(name, data_dir, seed, path=None):
    """What file dataset name is made of: the text of 'text' / 'shakespeare' (newlines as open() reads
    them), or the {'train', 'val', 'test'} lists of (question, answer) of 'alpaca' / 'e2e'."""
    path = path or os.path.join(data_dir, DEFAULT_PATHS.get(name, ''))
    if name == 'text' and os.path.isdir(path):
        raise ValueError(f"dataset 'text' needs a plain-text file: {PATH_HINT}")
    if name in ('text', 'shakespeare'):
        return read_text(fetch(path, URLS.get(name))).replace('\r\n', '\n').replace('\r', '\n')
    if name == 'alpaca':
        splits = split_by_question(read_alpaca(fetch(path, URLS['alpaca'])), seed)
    elif os.path.isdir(path):  # e2e: a folder with the official splits
        files = {
            s: [os.path.join(path, f) for f in fs if os.path.exists(os.path.join(path, f))]
            for s, fs in (
                ('train', ['trainset.csv']),
                ('val', ['devset.csv']),
                ('test', ['testset_w_refs.csv', 'testset.csv']),
            )
        }
        missing = [s for s, fs in files.items() if not fs]
        if missing:
            raise FileNotFoundError(
                f'{path} lacks the E2E {"/".join(missing)} CSV (trainset.csv, devset.csv, '
                f'testset_w_refs.csv from github.com/tuetschek/e2e-dataset): put them there'
            )
        splits = {s: read_e2e(fs[0]) for s, fs in files.items()}
    elif os.path.exists(path):  # e2e: one CSV that we split ourselves
        splits = split_by_question(read_e2e(path), seed)
    else:
        raise FileNotFoundError(
            f'{path} not found: put the E2E CSVs (trainset.csv, devset.csv, testset_w_refs.csv '
            f'from github.com/tuetschek/e2e-dataset) in a folder there, or {PATH_HINT}'
        )
    for s, items in splits.items():
        if not items:
            raise ValueError(f'{path}: too few items for a {s} split')
    return splits
