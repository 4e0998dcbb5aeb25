"""
Data for nanoGPT-for-LoRA: an offline synthetic world, its tasks, real-data loaders, exact-match eval.

    python data.py            # builds data/world/ offline (seconds) and prints a summary

Dataset names understood by get_dataset(name, block_size, ...):
  world              pretraining corpus of the synthetic world (a plain token stream, nanoGPT .bin)
  mixture            all 12 instruction tasks (3 families, MultiLoRA-style heterogeneous mixture)
  task:<name>        one task of the mixture or of the skill set, e.g. task:city_of; also
                     task:color_of, a spare knowledge task kept outside the mixture
  (mixture tasks: instruction  reverse_words remove_word first_letters count_words
                  understanding sentiment entail topic compare
                  knowledge    city_of job_of pet_of country_of)
  skill1, skill2     LoRA-Soups skills: 'shift' (each letter to the next one in the alphabet, a
                     fact the corpus teaches) and 'reverse' (reverse a string of letters, a procedure)
  skills             skill1 + skill2 mixed (the data-mixing baseline)
  composite          'shift_reverse' (needs both skills); its train split is small (5% of the two
                     skills' data, for learning CAT weights); evaluates skill1, skill2 and composite
  text               a plain-text corpus from path= (tiny-shakespeare style); 'shakespeare' downloads
  alpaca             Alpaca-format instruction JSON from path=
  e2e                E2E NLG CSV (columns mr, ref) from path= (a file, or a folder with train/dev/test)

Every instruction item is one prompt/answer pair in one format:
    "Q: <question>\nA:" + " <answer>" + <|endoftext|>
and the loss covers only the answer and the stop token (targets are -1 on the prompt and padding).
Tokenizers: 'world' (a small BPE trained by this file on the world's own corpus, committed as
data/world.tiktoken; 1024 ids), 'world-bytes' (plain bytes; 257 ids), 'gpt2' (tiktoken's own).
All three end answers with <|endoftext|>, the only special token.
"""
import base64
import collections
import csv
import hashlib
import json
import os
import random
import re
import sys
import time

import numpy as np
import torch
import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
WORLD_RANKS = os.path.join(HERE, 'data', 'world.tiktoken')
# GPT-2's one special token ends every world document in pretraining and every answer in the tasks,
# so the stop token has a trained embedding before any fine-tuning (an adapter cannot train it)
EOT = '<|endoftext|>'
# GPT-2's split pattern, except that digits come one at a time so that arithmetic sees digits
PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# -----------------------------------------------------------------------------------------------
# the world: a few hundred people with four facts each, cities in countries, words, numbers

JOBS = 'baker farmer doctor teacher pilot singer painter tailor miner sailor cook judge'.split()
PETS = 'cat dog fish bird horse goat rabbit frog'.split()
COLORS = 'red blue green yellow black white orange purple'.split()
ANIMALS = 'cat dog fish bird horse goat rabbit frog lion bear wolf duck'.split()
FOODS = 'bread soup cake apple rice cheese pie egg plum milk'.split()
WEATHER = 'rain snow wind storm cloud fog sun ice frost thunder'.split()
SPORTS = 'ball race match goal team game kick swim run jump'.split()
TOPICS = {'animal': ANIMALS, 'food': FOODS, 'weather': WEATHER, 'sport': SPORTS}
GOOD = 'good great nice fine lovely happy warm bright kind sweet'.split()
BAD = 'bad awful sad poor ugly cold dull rude bitter grim'.split()
THINGS = 'house book song day trip meal room town road film'.split()
SYL = ('ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu '
       'ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu za ze zo').split()
LETTERS = 'abcdefghijklmnopqrstuvwxyz'

FACT_TEMPLATES = {  # how the corpus states each fact; tasks ask with wordings never used here
    'city': ['{p} lives in {v}.', '{p} has a home in {v}.', 'the home of {p} is in {v}.'],
    'job': ['{p} works as a {v}.', '{p} is a {v} by trade.', 'the job of {p} is {v}.'],
    'pet': ['{p} owns a {v}.', '{p} keeps a pet {v}.', 'the pet of {p} is a {v}.'],
    'color': ['the favorite color of {p} is {v}.', '{p} likes the color {v} best.'],
}
COUNTRY_TEMPLATES = ['{c} is a city in {k}.', '{c} lies in {k}.', 'the city {c} is part of {k}.']


def make_world(seed=1337, n_people=200, n_cities=24, n_countries=6, bio_repeats=24):
    """The world as a dict of plain python values, from one seed."""
    rng = random.Random(seed)
    names = set()
    def fresh_name(n_syl):
        while True:
            w = ''.join(rng.choice(SYL) for _ in range(n_syl))
            if w not in names and w not in ANIMALS + FOODS + JOBS:
                names.add(w)
                return w
    countries = [fresh_name(3) for _ in range(n_countries)]
    cities = {fresh_name(3): countries[i % n_countries] for i in range(n_cities)}
    people = {}
    for _ in range(n_people):
        people[fresh_name(rng.choice([2, 3]))] = dict(
            city=rng.choice(list(cities)), job=rng.choice(JOBS), pet=rng.choice(PETS),
            color=rng.choice(COLORS))
    strangers = [fresh_name(2) for _ in range(60)]  # names for understanding tasks, with no facts
    return dict(seed=seed, countries=countries, cities=cities, people=people, strangers=strangers,
                bio_repeats=bio_repeats)


def spelled(w):
    return ' '.join(w)


def make_corpus(world):
    """Pretraining text: biographies (facts in shuffled order, varied templates), geography,
    arithmetic, spelling, and label-free sentences in the understanding tasks' vocabulary."""
    rng = random.Random(world['seed'] + 1)
    docs = []
    for _ in range(world['bio_repeats']):
        for p, facts in world['people'].items():
            keys = list(FACT_TEMPLATES)
            rng.shuffle(keys)
            docs.append(' '.join(rng.choice(FACT_TEMPLATES[k]).format(p=p, v=facts[k]) for k in keys))
        for c, k in world['cities'].items():
            docs.append(rng.choice(COUNTRY_TEMPLATES).format(c=c, k=k))
    for a in range(50):
        for b in range(50):
            docs.append(rng.choice(['{a} plus {b} is {s}.', '{a} + {b} = {s}.']).format(a=a, b=b, s=a + b))
    for a in range(100):
        b = rng.randrange(100)
        docs.append(f'{max(a, b)} is more than {min(a, b)}.' if a != b else f'{a} equals {b}.')
    common = sorted(set(JOBS + COLORS + ANIMALS + FOODS + WEATHER + SPORTS + GOOD + BAD + THINGS))
    names = list(world['people']) + list(world['cities']) + world['countries'] + world['strangers']
    for w in common * 6 + names:  # word knowledge: common words often, names once
        docs.append(rng.choice(['the word {w} is spelled {s}.', '{w} is written {s}.',
                                '{w} starts with the letter {l}.']).format(w=w, s=spelled(w), l=w[0]))
    for _ in range(20):
        docs.append('the alphabet is ' + spelled(LETTERS) + '.')
        docs.extend(f'the letter after {a} is {b}.' for a, b in zip(LETTERS, LETTERS[1:] + 'a'))
    for _ in range(3000):  # plain sentences: the words are known, the labels are not
        topic = rng.choice(list(TOPICS))
        x, y = rng.sample(TOPICS[topic], 2)
        docs.append(rng.choice([f'the {x} and the {y} were {rng.choice(GOOD + BAD)} today.',
                                f'we talked about the {x} near the {y}.',
                                f'{rng.choice(world["strangers"])} said the {rng.choice(THINGS)} was '
                                f'{rng.choice(GOOD + BAD)}.']))
    rng.shuffle(docs)
    return '\n'.join(docs) + '\n'


# -----------------------------------------------------------------------------------------------
# tokenizers

def train_bpe(text, vocab_size):
    """Byte-level BPE over unique pre-tokenised words weighted by count (much faster than merging
    on raw text). Returns tiktoken mergeable ranks: the 256 bytes, then merges in order."""
    counts = collections.Counter(re.findall(r"'s|'t| ?[a-zA-Z]+| ?[0-9]| ?[^\sa-zA-Z0-9]+|\s+", text))
    words = [[bytes([b]) for b in w.encode()] for w in counts]
    freq = list(counts.values())
    ranks = {bytes([i]): i for i in range(256)}
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pairs[a, b] += freq[i]
            where[a, b].add(i)
    while len(ranks) < vocab_size and pairs:
        (a, b), n = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))  # ties broken by bytes
        if n < 2:
            break
        ranks[a + b] = len(ranks)
        for i in where.pop((a, b)):
            w, f = words[i], freq[i]
            for p in zip(w, w[1:]):
                pairs[p] -= f
                if pairs[p] <= 0:
                    del pairs[p]
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(a + b); j += 2
                else:
                    out.append(w[j]); j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pairs[p] += f
                where[p].add(i)
    return ranks


def write_ranks(ranks, path):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f'{base64.b64encode(tok).decode()} {r}\n')
    os.replace(tmp, path)


def read_ranks(path):
    with open(path) as f:
        return {base64.b64decode(t): int(r) for t, r in (line.split() for line in f if line.strip())}


_TOKENIZERS = {}


def get_tokenizer(name='world'):
    """'world' (BPE on the world's corpus, 1024 ids), 'world-bytes' (256 bytes + 2 specials), 'gpt2'."""
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]
    if name == 'world':
        if not os.path.exists(WORLD_RANKS):  # regenerate the committed file: deterministic
            os.makedirs(os.path.dirname(WORLD_RANKS), exist_ok=True)
            write_ranks(train_bpe(make_corpus(make_world()), 1023), WORLD_RANKS)
        ranks = read_ranks(WORLD_RANKS)
    elif name == 'world-bytes':
        ranks = {bytes([i]): i for i in range(256)}
    elif name == 'gpt2':
        try:
            enc = tiktoken.get_encoding('gpt2')
        except Exception as e:
            import tempfile
            cache = os.environ.get('TIKTOKEN_CACHE_DIR') or os.path.join(tempfile.gettempdir(), 'data-gym-cache')
            raise ValueError(f"tiktoken could not load 'gpt2' ({type(e).__name__}; offline?): run "
                             f"tiktoken.get_encoding('gpt2') once with network, then copy its cache folder to "
                             f"{cache} (or point TIKTOKEN_CACHE_DIR at it)") from None
        _TOKENIZERS[name] = enc
        return enc
    else:
        raise ValueError(f"unknown tokenizer {name!r}: use 'world', 'world-bytes' or 'gpt2'")
    n = len(ranks)
    enc = tiktoken.Encoding(name, pat_str=PAT, mergeable_ranks=ranks,
                            special_tokens={EOT: n})
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
    dtype = np.uint16 if enc.n_vocab < 2 ** 16 else np.uint32
    meta = dict(tokenizer=tok_name, vocab_size=enc.n_vocab, dtype=np.dtype(dtype).name, tokens={})
    h = hashlib.sha256(tok_name.encode())
    for split, part in (('train', lines[:cut]), ('val', lines[cut:])):
        if docs:
            lines_ids = enc.encode_ordinary_batch([line.rstrip('\n') for line in part])
            ids = [i for line in lines_ids for i in line + [enc.eot_token]]
        else:
            ids = enc.encode_ordinary(''.join(part))
        ids = np.array(ids, dtype=dtype)
        tmp = os.path.join(folder, f'{split}.bin.tmp')
        ids.tofile(tmp)
        os.replace(tmp, os.path.join(folder, f'{split}.bin'))
        meta['tokens'][split] = int(len(ids))
        h.update(ids.tobytes())
    meta['fingerprint'] = h.hexdigest()[:16]
    with open(os.path.join(folder, 'meta.json.tmp'), 'w') as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(folder, 'meta.json.tmp'), os.path.join(folder, 'meta.json'))
    return meta


def read_meta(folder, tok_name):
    path = os.path.join(folder, 'meta.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: prepare the data first (python data.py)')
    with open(path) as f:
        meta = json.load(f)
    if meta.get('tokenizer') != tok_name:
        raise ValueError(f"{folder} was tokenised with {meta.get('tokenizer')!r} but tokenizer {tok_name!r} was "
                         f"requested: delete {folder} to re-tokenise, or pass tokenizer={meta.get('tokenizer')!r}")
    return meta


class StreamDataset:
    """A plain token stream: random block_size windows, every position a target (nanoGPT)."""
    tasks = []

    def __init__(self, folder, block_size, enc, tok_name):
        self.meta = read_meta(folder, tok_name)
        if self.meta['vocab_size'] != enc.n_vocab:
            raise ValueError(f"{folder}/meta.json says vocab_size={self.meta['vocab_size']} but tokenizer "
                             f"{tok_name!r} has {enc.n_vocab}: delete {folder} to re-tokenise")
        self.folder, self.block_size, self.tokenizer = folder, block_size, enc
        self.vocab_size, self.stop_token = enc.n_vocab, None
        self.fingerprint = self.meta['fingerprint']

    def get_batch(self, split, batch_size, generator=None):
        # re-open the memmap every batch to avoid a memory leak (as nanoGPT does)
        data = np.memmap(os.path.join(self.folder, f'{split}.bin'), dtype=self.meta['dtype'], mode='r')
        if len(data) <= self.block_size:
            raise ValueError(f'{self.folder}/{split}.bin has {len(data)} tokens, fewer than block_size+1')
        ix = torch.randint(len(data) - self.block_size, (batch_size,), generator=generator).tolist()
        x = torch.stack([torch.from_numpy(data[i:i + self.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.block_size].astype(np.int64)) for i in ix])
        return x, y

    def evaluate(self, model, split='val', max_items=None, batch_size=64):
        """Mean next-token loss over up to max_items (default 50) batches."""
        g = torch.Generator().manual_seed(0)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            losses = [model(*self.get_batch(split, batch_size, g))[1].item() for _ in range(max_items or 50)]
        model.train(was_training)
        loss = sum(losses) / len(losses)
        return {'avg': {'acc': float('nan'), 'loss': loss, 'n': len(losses) * batch_size}}


# -----------------------------------------------------------------------------------------------
# instruction tasks: (question, answer) pairs per split; train/val/test never share a question

def _unique(rng, make, n, seen=None):
    """n distinct (question, answer) pairs from make(rng); question wordings stay unique."""
    seen, out = set() if seen is None else seen, []
    for _ in range(200 * n):
        q, a = make(rng)
        if q not in seen:
            seen.add(q)
            out.append((q, a))
            if len(out) == n:
                return out
    raise ValueError(f'could only make {len(out)} distinct items of {n} asked: lower the task size')


def _split_open(make, sizes, rng):
    n_train, n_val, n_test = sizes
    items = _unique(rng, make, n_train + n_val + n_test)
    return {'train': items[:n_train], 'val': items[n_train:n_train + n_val], 'test': items[n_train + n_val:]}


def _split_keys(keys, ask, rng, train_forms, eval_forms):
    """Split by entity (60/20/20): eval entities are never asked about in training, and only with
    wordings that training never uses (so the answer must come from pretraining, not fine-tuning)."""
    keys = sorted(keys)
    rng.shuffle(keys)
    a, b = int(0.6 * len(keys)), int(0.8 * len(keys))
    return {'train': [(f.format(p=k), ask(k)) for k in keys[:a] for f in train_forms],
            'val': [(rng.choice(eval_forms).format(p=k), ask(k)) for k in keys[a:b]],
            'test': [(rng.choice(eval_forms).format(p=k), ask(k)) for k in keys[b:]]}


def _words(rng, lo, hi, pool=THINGS + COLORS + ANIMALS + FOODS):
    return rng.sample(pool, rng.randint(lo, hi))


def _letters(rng, lo=3, hi=6):
    return [rng.choice(LETTERS) for _ in range(rng.randint(lo, hi))]


def _shift(ls):
    return [LETTERS[(LETTERS.index(c) + 1) % 26] for c in ls]


def _reverse_words(w, rng):
    ws = _words(rng, 2, 4)
    return f'reverse the order of the words: {" ".join(ws)}', ' '.join(ws[::-1])


def _remove_word(w, rng):
    ws = _words(rng, 3, 5)
    k = rng.randrange(len(ws))
    return f'remove the word {ws[k]} from: {" ".join(ws)}', ' '.join(ws[:k] + ws[k + 1:])


def _first_letters(w, rng):
    ws = _words(rng, 2, 4)
    return f'give the first letter of each word: {" ".join(ws)}', ' '.join(x[0] for x in ws)


def _count_words(w, rng):
    ws = _words(rng, 1, 9)
    return f'how many words are in this list? {" ".join(ws)}', str(len(ws))


def _sentiment(w, rng):
    neg, adj = rng.random() < 0.5, rng.choice(GOOD + BAD)
    s = f"{rng.choice(w['strangers'])} said the {rng.choice(THINGS)} was {'not ' if neg else ''}{adj}"
    return f'is this positive or negative? {s}.', 'positive' if (adj in GOOD) != neg else 'negative'


def _entail(w, rng):
    """Premise about one person; the hypothesis follows (same person and job), contradicts it (same
    person, other job) or is about someone else (maybe). Two people per premise was at chance."""
    (a, b), (j1, j2) = rng.sample(w['strangers'], 2), rng.sample(JOBS, 2)
    who, job, ans = rng.choice([(a, j1, 'yes'), (a, j2, 'no'), (b, rng.choice([j1, j2]), 'maybe')])
    return f'{a} is a {j1}. does it follow that {who} is a {job}?', ans


def _topic(w, rng):
    """Two words of the topic and one distractor from another: a majority vote, not a lookup."""
    t, other = rng.sample(list(TOPICS), 2)
    ws = rng.sample(TOPICS[t], 2) + [rng.choice(TOPICS[other])]
    rng.shuffle(ws)
    return f'what is this about? the {ws[0]} and the {ws[1]} by the {ws[2]}.', t


def _compare(w, rng):
    a, b = rng.sample(range(100), 2)
    return f'which number is larger, {a} or {b}?', str(max(a, b))


OPEN_TASKS = [  # (task, item generator, rng name): tasks with more possible items than we draw
    ('reverse_words', _reverse_words, 'rw'), ('remove_word', _remove_word, 'rm'), ('first_letters', _first_letters, 'fl'),
    ('count_words', _count_words, 'cw'), ('sentiment', _sentiment, 'se'), ('entail', _entail, 'en'),
    ('topic', _topic, 'to'), ('compare', _compare, 'co')]
FAMILIES = {'instruction': ['reverse_words', 'remove_word', 'first_letters', 'count_words'],
            'understanding': ['sentiment', 'entail', 'topic', 'compare'],
            'knowledge': ['city_of', 'job_of', 'pet_of', 'country_of'],
            'skills': ['shift', 'reverse', 'shift_reverse']}
TASK_FAMILY = {t: f for f, ts in FAMILIES.items() for t in ts}
MIXTURE = FAMILIES['instruction'] + FAMILIES['understanding'] + FAMILIES['knowledge']
SKILL1, SKILL2, COMPOSITE = FAMILIES['skills']
TASK_FAMILY['color_of'] = 'knowledge'  # a spare, outside the mixture


KNOWLEDGE = [  # (task, fact, training wordings, evaluation wordings): the latter never occur in training
    ('city_of', 'city', ['where does {p} live?', 'in which city does {p} live?', 'which city is home to {p}?',
                         'what city does {p} live in?', 'tell me the city of {p}.', 'what is the home city of {p}?'],
     ['name the city where {p} lives.', 'which city does {p} call home?']),
    ('job_of', 'job', ['what does {p} do for a living?', 'what is the job of {p}?', 'what work does {p} do?',
                       'which job does {p} have?', 'tell me the job of {p}.', 'what is the trade of {p}?'],
     ['name the job that {p} does.', 'what kind of work does {p} do?']),
    ('pet_of', 'pet', ['what pet does {p} have?', 'which animal does {p} keep?', 'what animal does {p} own?',
                       'which pet does {p} own?', 'tell me the pet of {p}.', 'what kind of pet does {p} keep?'],
     ['name the pet that {p} keeps.', 'which animal is the pet of {p}?']),
    ('color_of', 'color', ['what is the favorite color of {p}?', 'which color does {p} like best?',
                           'what color does {p} love most?', 'tell me the color {p} likes.',
                           'which color is the favorite of {p}?', 'what color does {p} prefer?'],
     ['name the color that {p} likes best.', 'what is the best loved color of {p}?']),
    ('country_of', 'country', ['in which country does {p} live?', 'what country is {p} from?',
                               'which country is home to {p}?', 'tell me the country of {p}.',
                               'what is the home country of {p}?', 'in what land does {p} live?'],
     ['name the country where {p} lives.', 'which country does {p} call home?']),
]


def make_tasks(world, n_train=2000, n_eval=200, n_skill=4000, composite_frac=0.05):
    """{task: {'train'|'val'|'test': [(question, answer), ...]}} for the mixture and the skill set
    (plus 'color_of', a spare knowledge task outside the mixture)."""
    people, cities = world['people'], world['cities']
    sizes = (n_train, n_eval, n_eval)
    def rng_for(name):
        return random.Random(f"{world['seed']}/{name}")
    T = {}
    for name, make, seed in OPEN_TASKS:
        T[name] = _split_open(lambda r: make(world, r), sizes, rng_for(seed))
    for task, key, train_forms, eval_forms in KNOWLEDGE:
        ask = (lambda k: lambda p: people[p][k])(key) if key != 'country' else (lambda p: cities[people[p]['city']])
        T[task] = _split_keys(people, ask, rng_for(task), train_forms, eval_forms)
    # LoRA-Soups analogue: skill 1 needs world knowledge (the alphabet), skill 2 a procedure;
    # the composite needs both, and has only a small train split for learning merge weights
    seen = set()  # one letter string never appears in two tasks' splits
    skill = {}
    for name, form, f in ((SKILL1, 'shift each letter by one: {}', _shift),
                          (SKILL2, 'reverse the letters: {}', lambda l: l[::-1]),
                          (COMPOSITE, 'shift each letter by one and reverse: {}', lambda l: _shift(l)[::-1])):
        n_tr = int(composite_frac * 2 * n_skill) if name == COMPOSITE else n_skill
        r = rng_for(name)
        pool = _unique(r, lambda r: (' '.join(_letters(r)), None), n_tr + 2 * n_eval, seen)
        items = [(form.format(s), ' '.join(f(s.split()))) for s, _ in pool]
        skill[name] = {'train': items[:n_tr], 'val': items[n_tr:n_tr + n_eval], 'test': items[n_tr + n_eval:]}
    T.update(skill)
    return T


# -----------------------------------------------------------------------------------------------
# instruction datasets: one item = prompt + answer + stop; loss on the answer only

PROMPT = 'Q: {q}\nA:'


class InstructDataset:
    """Prompt/answer items of several tasks. get_batch pads each batch to its longest item (not to
    block_size: items are short, and eval prompts see no other item in context either)."""

    def __init__(self, items, block_size, enc, tok_name, train_tasks, eval_tasks=None, mix='uniform'):
        if mix not in ('uniform', 'proportional'):
            raise ValueError(f"mix={mix!r}: use 'uniform' (each task equally often) or 'proportional' (by size)")
        self.tokenizer, self.block_size, self.vocab_size = enc, block_size, enc.n_vocab
        self.stop_token, self.mix = enc.eot_token, mix
        self.train_tasks, self.tasks = list(train_tasks), list(eval_tasks or train_tasks)
        self.text = {t: items[t] for t in set(self.train_tasks + self.tasks)}
        self.data = {}  # task -> split -> list of (prompt ids, answer ids incl. stop)
        h = hashlib.sha256(tok_name.encode())
        for t in sorted(self.text):
            self.data[t] = {}
            for split, pairs in self.text[t].items():
                ps = enc.encode_ordinary_batch([PROMPT.format(q=q) for q, _ in pairs])
                ans = enc.encode_ordinary_batch([' ' + a for _, a in pairs])
                self.data[t][split] = [(p, a + [self.stop_token]) for p, a in zip(ps, ans)]
                h.update(json.dumps([t, split, ps, ans]).encode())
        self.fingerprint = h.hexdigest()[:16]

    def collate(self, pairs):
        """(x, y) for a list of (prompt, answer): y is the next token on answer positions, -1 elsewhere."""
        rows = []
        for p, a in pairs:
            a = a[:self.block_size]  # keep at least one prompt token; crop long prompts from the left
            p = p[max(0, len(p) + len(a) - 1 - self.block_size):]
            rows.append((p + a, len(p)))
        T = max(len(s) for s, _ in rows) - 1
        x = torch.full((len(rows), T), self.stop_token, dtype=torch.long)
        y = torch.full((len(rows), T), -1, dtype=torch.long)
        for i, (s, n_p) in enumerate(rows):
            s = torch.tensor(s[:T + 1])
            x[i, :len(s) - 1] = s[:-1]
            y[i, n_p - 1:len(s) - 1] = s[n_p:]  # the token after the last prompt token is the first answer token
        return x, y

    def get_batch(self, split, batch_size, generator=None):
        tasks = self.train_tasks
        if self.mix == 'uniform':
            ti = torch.randint(len(tasks), (batch_size,), generator=generator).tolist()
            pairs = [self.data[tasks[t]][split] for t in ti]
            pairs = [ps[torch.randint(len(ps), (1,), generator=generator).item()] for ps in pairs]
        else:
            pool = [p for t in tasks for p in self.data[t][split]]
            pairs = [pool[i] for i in torch.randint(len(pool), (batch_size,), generator=generator).tolist()]
        return self.collate(pairs)

    @torch.no_grad()
    def evaluate(self, model, split='test', max_items=None, batch_size=64, tasks=None):
        """Exact match by greedy generation (batched by prompt length) and answer-token loss, per task."""
        was_training = model.training
        model.eval()
        out = {}
        for t in tasks or self.tasks:
            items = self.data[t][split][:max_items]
            nll = n_tok = 0.0
            for i in range(0, len(items), batch_size):
                x, y = self.collate(items[i:i + batch_size])
                logits, _ = model(x)  # full (B, T, V) logits: model(x, y) returns them only where y counts
                nll += torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                                         ignore_index=-1, reduction='sum').item()
                n_tok += (y != -1).sum().item()
            max_new = min(max(len(a) for _, a in items), self.block_size // 2)
            preds = self.generate(model, [p for p, _ in items], max_new, batch_size)
            out[t] = {'acc': accuracy(preds, [a for _, a in items], self.stop_token),
                      'loss': nll / max(n_tok, 1), 'n': len(items)}
        model.train(was_training)
        out['avg'] = {k: sum(r[k] for r in out.values()) / len(out) for k in ('acc', 'loss')}
        out['avg']['n'] = sum(r['n'] for r in out.values() if 'n' in r)
        return out

    def generate(self, model, prompts, max_new, batch_size=64):
        """Greedy continuations of prompts; rows of equal length share a batch (generate takes no padding)."""
        preds = [None] * len(prompts)
        by_len = collections.defaultdict(list)
        for i, p in enumerate(prompts):
            by_len[len(p)].append(i)
        for n, idx in sorted(by_len.items()):
            keep = min(n, self.block_size - max_new)  # left-crop prompts that would not fit
            for j in range(0, len(idx), batch_size):
                rows = idx[j:j + batch_size]
                x = torch.tensor([prompts[i][n - keep:] for i in rows], dtype=torch.long)
                y = model.generate(x, max_new, temperature=0.0, stop_token=self.stop_token)
                for i, row in zip(rows, y[:, keep:].tolist()):
                    preds[i] = row
        return preds

    def decode(self, ids):
        return self.tokenizer.decode(cut_at(ids, self.stop_token))


def cut_at(ids, stop):
    return ids[:ids.index(stop)] if stop in ids else ids


def accuracy(preds, answers, stop):
    """Exact match: the tokens before the first stop token must equal the answer's (a prediction
    that never stops is wrong)."""
    if len(preds) != len(answers):
        raise ValueError(f'{len(preds)} predictions for {len(answers)} answers')
    ok = [stop in p and cut_at(list(p), stop) == cut_at(list(a), stop) for p, a in zip(preds, answers)]
    return sum(ok) / max(len(ok), 1)


def format_results(results):
    """A table of evaluate()'s dict, with per-family means."""
    lines = [f"{'task':<16}{'family':<15}{'acc':>7}{'loss':>8}{'n':>6}"]
    fam = collections.defaultdict(list)
    for t, r in results.items():
        if t == 'avg':
            continue
        fam[TASK_FAMILY.get(t, '-')].append(r)
        lines.append(f"{t:<16}{TASK_FAMILY.get(t, '-'):<15}{r['acc']:>7.3f}{r['loss']:>8.3f}{r['n']:>6}")
    if len(fam) > 1:
        for f, rs in fam.items():
            lines.append(f"{'mean':<16}{f:<15}{sum(r['acc'] for r in rs) / len(rs):>7.3f}"
                         f"{sum(r['loss'] for r in rs) / len(rs):>8.3f}{sum(r['n'] for r in rs):>6}")
    a = results['avg']
    lines.append(f"{'avg':<16}{'':<15}{a['acc']:>7.3f}{a['loss']:>8.3f}{a['n']:>6}")
    return '\n'.join(lines)


# -----------------------------------------------------------------------------------------------
# building the world on disk, and get_dataset

VERSION = 3  # bump when make_world / make_corpus / make_tasks change: built worlds are then rebuilt
WORLD_DEFAULTS = dict(n_people=200, n_cities=24, n_countries=6, bio_repeats=24,
                      n_train=2000, n_eval=200, n_skill=4000, composite_frac=0.05)


def build_world(data_dir='data', seed=1337, tokenizer='world', **opts):
    """Write <data_dir>/world[-seed]/ : corpus.txt, world.json, tasks.json, <tokenizer>/{train,val}.bin,
    meta.json. Deterministic; rebuilt only when the seed, sizes or files change."""
    cfg = dict(WORLD_DEFAULTS, seed=seed)
    for k, v in opts.items():
        if k not in WORLD_DEFAULTS:
            raise ValueError(f'unknown world option {k!r}: use one of {", ".join(WORLD_DEFAULTS)}')
        cfg[k] = type(WORLD_DEFAULTS[k])(v)
    folder = os.path.join(data_dir, 'world' if cfg == dict(WORLD_DEFAULTS, seed=1337) else
                          'world-' + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8])
    stamp = os.path.join(folder, 'config.json')
    with open(stamp) if os.path.exists(stamp) else open(os.devnull) as f:
        stale = f.read() != json.dumps(dict(cfg, version=VERSION))
    if stale:
        os.makedirs(folder, exist_ok=True)
        world = make_world(seed, cfg['n_people'], cfg['n_cities'], cfg['n_countries'], cfg['bio_repeats'])
        tasks = make_tasks(world, cfg['n_train'], cfg['n_eval'], cfg['n_skill'], cfg['composite_frac'])
        for name, obj in (('corpus.txt', make_corpus(world)), ('world.json', world), ('tasks.json', tasks)):
            with open(os.path.join(folder, name + '.tmp'), 'w') as f:
                f.write(obj) if isinstance(obj, str) else json.dump(obj, f)
            os.replace(os.path.join(folder, name + '.tmp'), os.path.join(folder, name))
        for sub in os.listdir(folder):  # token streams of an older build are stale
            if os.path.exists(os.path.join(folder, sub, 'meta.json')):
                os.remove(os.path.join(folder, sub, 'meta.json'))
        with open(stamp + '.tmp', 'w') as f:
            f.write(json.dumps(dict(cfg, version=VERSION)))
        os.replace(stamp + '.tmp', stamp)
    stream = os.path.join(folder, tokenizer)
    if not os.path.exists(os.path.join(stream, 'meta.json')):
        with open(os.path.join(folder, 'corpus.txt')) as f:
            write_stream(stream, f.read(), get_tokenizer(tokenizer), tokenizer, docs=True)
    return folder


def get_dataset(name, block_size, tokenizer=None, data_dir='data', seed=1337, **opts):
    """A dataset object (see the module docstring for names). opts: world sizes (WORLD_DEFAULTS),
    mix ('uniform'|'proportional'), path (real data)."""
    tok_name = tokenizer or ('gpt2' if name in ('shakespeare',) else 'world')
    enc = get_tokenizer(tok_name)
    mix = opts.pop('mix', 'uniform')
    if name in ('text', 'shakespeare', 'alpaca', 'e2e'):
        return get_real_dataset(name, block_size, enc, tok_name, data_dir, seed, mix=mix, **opts)
    folder = build_world(data_dir, seed, tok_name, **opts)
    if name == 'world':
        return StreamDataset(os.path.join(folder, tok_name), block_size, enc, tok_name)
    with open(os.path.join(folder, 'tasks.json')) as f:
        items = json.load(f)
    train, evals = {'mixture': (MIXTURE, None), 'skill1': ([SKILL1], None), 'skill2': ([SKILL2], None),
                    'skills': ([SKILL1, SKILL2], None),
                    'composite': ([COMPOSITE], [SKILL1, SKILL2, COMPOSITE])}.get(name, (None, None))
    if train is None and name.startswith('task:') and name[5:] in items:
        train = [name[5:]]
    if train is None:
        raise ValueError(f"unknown dataset {name!r}: use world, mixture, skill1, skill2, skills, composite, "
                         f"task:<{'|'.join(items)}>, text, shakespeare, alpaca or e2e")
    return InstructDataset(items, block_size, enc, tok_name, train, evals, mix)


URLS = {'shakespeare': 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
        'alpaca': 'https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json'}
DEFAULT_PATHS = {'shakespeare': 'shakespeare/input.txt', 'alpaca': 'alpaca/alpaca_data.json', 'e2e': 'e2e'}


def fetch(path, url=None):
    """path if it exists, else a download to path when there is network; one-line error otherwise."""
    if os.path.exists(path):
        return path
    if url is None:
        raise FileNotFoundError(f'{path} not found: put the file there (or pass path=...)')
    try:
        import urllib.request
        with urllib.request.urlopen(url, timeout=15) as r:
            blob = r.read()
    except Exception as e:
        raise FileNotFoundError(f'{path} not found and {url} could not be downloaded ({type(e).__name__}): '
                                f'put the file there (or pass path=...)') from None
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
        f.write(blob)
    os.replace(path + '.tmp', path)
    return path


def read_alpaca(path):
    """Alpaca JSON: a list of {instruction, input, output} -> [(question, answer)]."""
    with open(path) as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path} is not valid JSON ({e.msg} at line {e.lineno}): expected Alpaca format') from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {'instruction', 'output'} <= set(r) for r in rows):
        raise ValueError(f'{path}: expected a JSON list of {{"instruction", "input", "output"}} objects '
                         f'(Alpaca format)')
    return [(r['instruction'].strip() + ('\n' + r['input'].strip() if r.get('input', '').strip() else ''),
             r['output'].strip()) for r in rows]


def read_e2e(path):
    """E2E NLG CSV (columns mr, ref) -> [(question, answer)]: the meaning representation in, text out."""
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {'mr', 'ref'} <= set(reader.fieldnames):
            raise ValueError(f'{path}: expected a CSV with columns mr,ref (E2E NLG), got {reader.fieldnames}')
        return [(f"describe: {r['mr'].strip()}", r['ref'].strip()) for r in reader]


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


def get_real_dataset(name, block_size, enc, tok_name, data_dir, seed, mix='uniform', path=None):
    path = path or os.path.join(data_dir, DEFAULT_PATHS.get(name, ''))
    if name == 'text' and (path is None or os.path.isdir(path)):
        raise ValueError("dataset 'text' needs path=<a plain-text file>")
    if name in ('text', 'shakespeare'):
        fetch(path, URLS.get(name))
        with open(path, encoding='utf-8') as f:
            text = f.read()
        src = hashlib.sha256(text.encode()).hexdigest()[:16]
        folder = os.path.join(data_dir, f'{name}-{src}', tok_name)
        if not os.path.exists(os.path.join(folder, 'meta.json')):
            write_stream(folder, text, enc, tok_name, val_frac=0.1)
        return StreamDataset(folder, block_size, enc, tok_name)
    if name == 'alpaca':
        splits = split_by_question(read_alpaca(fetch(path, URLS['alpaca'])), seed)
    else:  # e2e: a folder with the official splits, or one CSV that we split ourselves
        if os.path.isdir(path):
            files = {s: [os.path.join(path, f) for f in fs if os.path.exists(os.path.join(path, f))] for s, fs in
                     (('train', ['trainset.csv']), ('val', ['devset.csv']),
                      ('test', ['testset_w_refs.csv', 'testset.csv']))}
            missing = [s for s, fs in files.items() if not fs]
            if missing:
                raise FileNotFoundError(f'{path} lacks the E2E {"/".join(missing)} CSV (trainset.csv, devset.csv, '
                                        f'testset_w_refs.csv from github.com/tuetschek/e2e-dataset): put them there')
            splits = {s: read_e2e(fs[0]) for s, fs in files.items()}
        elif os.path.exists(path):
            splits = split_by_question(read_e2e(path), seed)
        else:
            raise FileNotFoundError(f'{path} not found: put the E2E CSVs (trainset.csv, devset.csv, testset_w_refs.csv '
                                    f'from github.com/tuetschek/e2e-dataset) in a folder there, or pass path=<one CSV>')
    for s, items in splits.items():
        if not items:
            raise ValueError(f'{path}: too few items for a {s} split')
    return InstructDataset({name: splits}, block_size, enc, tok_name, [name], None, mix)


def main(argv):
    t0 = time.time()
    enc = get_tokenizer('world')
    folder = build_world()
    ds = get_dataset('mixture', 256)
    with open(os.path.join(folder, 'world', 'meta.json')) as f:
        meta = json.load(f)
    corpus = os.path.getsize(os.path.join(folder, 'corpus.txt'))
    print(f"{folder} ready in {time.time() - t0:.1f}s: corpus {corpus / 1e6:.2f} MB, "
          f"{meta['tokens']['train']:,} train + {meta['tokens']['val']:,} val tokens "
          f"({corpus / sum(meta['tokens'].values()):.2f} bytes/token), tokenizer 'world' with {enc.n_vocab} ids")
    with open(os.path.join(folder, 'tasks.json')) as f:
        items = json.load(f)
    print(f"{'task':<16}{'family':<15}{'train':>6}{'val':>6}{'test':>6}  example")
    for t, sp in items.items():
        q, a = sp['test'][0]
        sizes = ''.join(f"{len(sp[s]):>6}" for s in ('train', 'val', 'test'))
        print(f"{t:<16}{TASK_FAMILY[t]:<15}{sizes}  {q!r} -> {a!r}")
    x, y = ds.get_batch('train', 1, torch.Generator().manual_seed(0))
    print(f"a training row: {enc.decode(x[0].tolist())!r}; its labels: {enc.decode(y[0][y[0] != -1].tolist())!r}")


if __name__ == '__main__':
    main(sys.argv[1:])
