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
import re

PATH_HINT = 'pass --data_path=FILE to train.py (path=FILE to data.get_dataset)'
URLS = {
    'shakespeare': 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
    'alpaca': 'https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json',
    'e2e': 'https://raw.githubusercontent.com/tuetschek/e2e-dataset/master/trainset.csv',
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


# -----------------------------------------------------------------------------------------------
# E2E NLG: meaning representations, delexicalisation, the splits

E2E_FILES = {'train': 'trainset.csv', 'val': 'devset.csv', 'test': 'testset_w_refs.csv'}
# Placeholders (TGen's, the E2E challenge baseline) for the slots that e2e_delex names: half of the test
# set's name[] values never occur in the devset, and a small model trained from scratch cannot copy an
# unseen name. eatType[] and food[] likewise: the devset's MRs hold one of the three eatType values of
# the E2E ontology (coffee shop) and two of its seven food values (Chinese, English)
E2E_PLACEHOLDERS = {'name': 'X-name', 'near': 'X-near', 'eatType': 'X-eatType', 'food': 'X-food'}


def e2e_delex_slots(spec):
    """The option e2e_delex -> the slots it delexicalises, in E2E_PLACEHOLDERS order: a string of
    comma-separated slots ('' = none, 'name,near', 'name,near,eatType,food'), a sequence of them, or
    the bool of checkpoints written before the option named its slots (True: name and near)."""
    if isinstance(spec, bool):
        return ('name', 'near') if spec else ()
    given = spec.split(',') if isinstance(spec, str) else list(spec)
    given = [s.strip() for s in given if s.strip()]
    unknown = [s for s in given if s not in E2E_PLACEHOLDERS]
    if unknown:
        raise ValueError(
            f"e2e_delex={spec!r}: unknown slot {', '.join(map(repr, unknown))}; use comma-separated "
            f"slots of {', '.join(E2E_PLACEHOLDERS)} ('' = none)"
        )
    return tuple(s for s in E2E_PLACEHOLDERS if s in given)


def parse_mr(mr):
    """'name[The Eagle], eatType[coffee shop]' -> {'name': 'The Eagle', 'eatType': 'coffee shop'}."""
    return dict(re.findall(r'(\w+)\s*\[([^\]]*)\]', mr))


def delexicalise(mr, ref, slots):
    """(mr, ref) with the values of slots (e2e_delex_slots) replaced by their placeholders, in the MR
    and, case-insensitively, wherever the ref (None: none) spells them out as whole words."""
    values = parse_mr(mr)
    for slot in e2e_delex_slots(slots):
        value, ph = values.get(slot), E2E_PLACEHOLDERS[slot]
        if value:
            mr = mr.replace(f'{slot}[{value}]', f'{slot}[{ph}]')
            if ref is not None:  # whole words: the pub in 'public' stays
                ref = re.sub(rf'(?<!\w){re.escape(value)}(?!\w)', ph, ref, flags=re.IGNORECASE)
    return mr, ref


def relexicalise(text, mr, slots):
    """Put the MR's values of slots back in place of their placeholders, with 'a' or 'an' before them
    as their first letter asks, and 'X-food food' as the value alone ('Fast food', not 'Fast food
    food'). A placeholder of a slot that the MR lacks (a hallucinated near[]) stays, so that it is
    seen and counted."""
    values = parse_mr(mr)
    for slot in e2e_delex_slots(slots):
        value, ph = values.get(slot), E2E_PLACEHOLDERS[slot]
        if value:
            if value.lower().endswith(' food'):
                text = re.sub(rf'{ph} food\b', ph, text)
            article = 'an' if value[0].lower() in 'aeiou' else 'a'
            text = re.sub(rf'\b([Aa])n? {ph}', rf'\g<1>{article[1:]} {ph}', text)
            text = text.replace(ph, value)
    return text


# How a text says a value (lower-case regular expressions), where the value's own words are not the
# only way: a loose check (a miss is surely a miss; a match may be a word of another slot)
NOT_FOR_FAMILIES = r"(\bnot?|n't|non)\W+(\w+\W+)?(famil|child|kid)"
E2E_VALUE_PATTERNS = {
    'area': {'riverside': r'river', 'city centre': r'cent(re|er)|city'},
    'priceRange': {
        'cheap': r'cheap|inexpensive|low|afford|budget',
        'moderate': r'moderate|average|mid|reasonabl',
        'high': r'high|expensive|pricey',
        'less than £20': r'20',
        '£20-25': r'20',
        'more than £30': r'30',
    },
    'rating': {  # parse_mr names 'customer rating' by its last word
        'low': r'low|poor|bad',
        'average': r'average|moderate|decent|ok',
        'high': r'high|great|excellent|good',
        '1 out of 5': r'\b1\b|one',
        '3 out of 5': r'\b3\b|three',
        '5 out of 5': r'\b5 out|five',
    },
    'familyFriendly': {  # yes: family, child or kid, and no negation of them
        'yes': rf'^(?!.*{NOT_FOR_FAMILIES}).*(famil|child|kid)',
        'no': rf'{NOT_FOR_FAMILIES}|adult',
    },
}


def e2e_slot_errors(text, mr):
    """How many of the MR's values text does not mention (E2E_VALUE_PATTERNS, else the value's own
    words: a placeholder, 'coffee shop', 'chinese'), plus the placeholders it writes that the MR has
    no value for (a hallucinated X-near): the slot check TGen reranks its beams by."""
    slots, text = parse_mr(mr), text.lower()
    errors = 0
    for slot, value in slots.items():
        pattern = E2E_VALUE_PATTERNS.get(slot, {}).get(value, re.escape(value.lower()))
        errors += not re.search(pattern, text)
    for slot, ph in E2E_PLACEHOLDERS.items():
        errors += ph.lower() in text and slots.get(slot) != ph
    return errors


def split_e2e_devset(pairs, seed, val_frac=0.1):
    """The devset as training data: 90% of its MRs train, the other 10% validate (no MR in both)."""
    mrs = sorted({q for q, _ in pairs})
    random.Random(seed).shuffle(mrs)
    val = set(mrs[: max(1, int(val_frac * len(mrs)))])
    return {
        'train': [(q, a) for q, a in pairs if q not in val],
        'val': [(q, a) for q, a in pairs if q in val],
    }


def read_e2e_folder(path, train, seed):
    """The official E2E files in folder path. train='trainset': trainset.csv trains (downloaded when
    absent and online), devset.csv validates; train='devset': the devset's MRs split 90/10 into
    train/val (the files shipped in data/e2e/ suffice). The test split is always testset_w_refs.csv."""
    if train not in ('trainset', 'devset'):
        raise ValueError(f"e2e_train={train!r}: use 'trainset' (42k rows) or 'devset' (shipped)")
    need = ['val', 'test'] if train == 'devset' else ['val', 'test', 'train']
    missing = [
        E2E_FILES[s] for s in need[:2] if not os.path.exists(os.path.join(path, E2E_FILES[s]))
    ]
    if missing:
        raise FileNotFoundError(
            f'{path} lacks {", ".join(missing)} (the E2E NLG files of '
            f'github.com/tuetschek/e2e-dataset): put them there'
        )
    test = read_e2e(os.path.join(path, E2E_FILES['test']))
    dev = read_e2e(os.path.join(path, E2E_FILES['val']))
    if train == 'devset':
        return {**split_e2e_devset(dev, seed), 'test': test}
    trainset = os.path.join(path, E2E_FILES['train'])
    try:
        fetch(trainset, URLS['e2e'])
    except FileNotFoundError:
        raise FileNotFoundError(
            f'{trainset} not found (42,061 rows, offline?): download it from '
            f'{URLS["e2e"]}, or train on the shipped devset with --e2e_train=devset'
        ) from None
    return {'train': read_e2e(trainset), 'val': dev, 'test': test}


def read_source(name, data_dir, seed, path=None, e2e_train='trainset'):
    """What file dataset name is made of: the text of 'text' / 'shakespeare' (newlines as open() reads
    them), or the {'train', 'val', 'test'} lists of (question, answer) of 'alpaca' / 'e2e'."""
    path = path or os.path.join(data_dir, DEFAULT_PATHS.get(name, ''))
    if name == 'text' and os.path.isdir(path):
        raise ValueError(f"dataset 'text' needs a plain-text file: {PATH_HINT}")
    if name in ('text', 'shakespeare'):
        return read_text(fetch(path, URLS.get(name))).replace('\r\n', '\n').replace('\r', '\n')
    if name == 'alpaca':
        splits = split_by_question(read_alpaca(fetch(path, URLS['alpaca'])), seed)
    elif os.path.isdir(path):  # e2e: a folder with the official files
        splits = read_e2e_folder(path, e2e_train, seed)
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
