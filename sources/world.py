"""
The synthetic world the project learns from, in plain python and deterministic from one seed: a few
hundred invented people with four facts each, cities in countries (make_world); the pretraining text
that states those facts, plus arithmetic, spelling and plain sentences (make_corpus); the byte-level
BPE trained on that text (train_bpe, committed as data/world.tiktoken); the instruction tasks asked
about the world (make_tasks), and write_world, which puts it all on disk for data.py to tokenise.

Tasks (python data.py prints each with its sizes and an example):
  mixture (12)   instruction    reverse_words remove_word first_letters count_words
                 understanding  sentiment entail topic compare
                 knowledge      city_of job_of pet_of country_of
  spare (1)      knowledge      color_of (task:color_of; outside the mixture)
  skills (3)     shift (skill1), reverse (skill2), shift_reverse (composite: needs both)
  manual (4)     manual (plain text about new people, skill A), known_qa (Q/A about the corpus's people,
                 skill B), manual_qa (Q/A about the manual's people: needs both), manual_qa_ample
Knowledge questions ask about people never asked about in training, in wordings used neither in
training nor in the corpus: the answer must come from pretraining, not from fine-tuning.
"""

import base64
import collections
import hashlib
import json
import os
import random
import re
import sys

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
SYL = (
    'ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu '
    'ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu za ze zo'
).split()
LETTERS = 'abcdefghijklmnopqrstuvwxyz'

FACT_TEMPLATES = {  # how the corpus states each fact; tasks ask with wordings never used here
    'city': ['{p} lives in {v}.', '{p} has a home in {v}.', 'the home of {p} is in {v}.'],
    'job': ['{p} works as a {v}.', '{p} is a {v} by trade.', 'the job of {p} is {v}.'],
    'pet': ['{p} owns a {v}.', '{p} keeps a pet {v}.', 'the pet of {p} is a {v}.'],
    'color': ['the favorite color of {p} is {v}.', '{p} likes the color {v} best.'],
}
COUNTRY_TEMPLATES = ['{c} is a city in {k}.', '{c} lies in {k}.', 'the city {c} is part of {k}.']


def name_maker(rng, taken):
    """A function n_syl -> a new invented name of n_syl syllables, never one in `taken` (which it extends)."""

    def fresh(n_syl):
        while True:
            w = ''.join(rng.choice(SYL) for _ in range(n_syl))
            if w not in taken:
                taken.add(w)
                return w

    return fresh


def make_world(seed=1337, n_people=200, n_cities=24, n_countries=6, bio_repeats=24):
    """The world as a dict of plain python values, from one seed."""
    rng = random.Random(seed)
    fresh_name = name_maker(rng, set(ANIMALS + FOODS + JOBS))
    countries = [fresh_name(3) for _ in range(n_countries)]
    cities = {fresh_name(3): countries[i % n_countries] for i in range(n_cities)}
    people = {}
    for _ in range(n_people):
        people[fresh_name(rng.choice([2, 3]))] = dict(
            city=rng.choice(list(cities)),
            job=rng.choice(JOBS),
            pet=rng.choice(PETS),
            color=rng.choice(COLORS),
        )
    strangers = [fresh_name(2) for _ in range(60)]  # names for understanding tasks, with no facts
    return dict(
        seed=seed,
        countries=countries,
        cities=cities,
        people=people,
        strangers=strangers,
        bio_repeats=bio_repeats,
    )


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
            docs.append(
                ' '.join(rng.choice(FACT_TEMPLATES[k]).format(p=p, v=facts[k]) for k in keys)
            )
        for c, k in world['cities'].items():
            docs.append(rng.choice(COUNTRY_TEMPLATES).format(c=c, k=k))
    for a in range(50):
        for b in range(50):
            docs.append(
                rng.choice(['{a} plus {b} is {s}.', '{a} + {b} = {s}.']).format(a=a, b=b, s=a + b)
            )
    for a in range(100):
        b = rng.randrange(100)
        docs.append(f'{max(a, b)} is more than {min(a, b)}.' if a != b else f'{a} equals {b}.')
    common = sorted(set(JOBS + COLORS + ANIMALS + FOODS + WEATHER + SPORTS + GOOD + BAD + THINGS))
    names = list(world['people']) + list(world['cities']) + world['countries'] + world['strangers']
    for w in common * 6 + names:  # word knowledge: common words often, names once
        docs.append(
            rng.choice(
                [
                    'the word {w} is spelled {s}.',
                    '{w} is written {s}.',
                    '{w} starts with the letter {l}.',
                ]
            ).format(w=w, s=spelled(w), l=w[0])
        )
    for _ in range(20):
        docs.append('the alphabet is ' + spelled(LETTERS) + '.')
        docs.extend(f'the letter after {a} is {b}.' for a, b in zip(LETTERS, LETTERS[1:] + 'a'))
    for _ in range(3000):  # plain sentences: the words are known, the labels are not
        topic = rng.choice(list(TOPICS))
        x, y = rng.sample(TOPICS[topic], 2)
        docs.append(
            rng.choice(
                [
                    f'the {x} and the {y} were {rng.choice(GOOD + BAD)} today.',
                    f'we talked about the {x} near the {y}.',
                    f'{rng.choice(world["strangers"])} said the {rng.choice(THINGS)} was '
                    f'{rng.choice(GOOD + BAD)}.',
                ]
            )
        )
    rng.shuffle(docs)
    return '\n'.join(docs) + '\n'


# -----------------------------------------------------------------------------------------------
# the world's tokenizer: a byte-level BPE, committed as data/world.tiktoken (data.get_tokenizer reads it)

TOKENIZER_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'world.tiktoken'
)
TOKENIZER_SHA256 = (
    'ee35fb39e19636148fbccad45b93647c4a8f156ea08b75a1ca563d0ba484afd8'  # the committed file's
)


def train_bpe(text, vocab_size):
    """Byte-level BPE over unique pre-tokenised words weighted by count (much faster than merging
    on raw text). Returns tiktoken mergeable ranks: the 256 bytes, then merges in order."""
    counts = collections.Counter(
        re.findall(r"'s|'t| ?[a-zA-Z]+| ?[0-9]| ?[^\sa-zA-Z0-9]+|\s+", text)
    )
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
                    out.append(a + b)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pairs[p] += f
                where[p].add(i)
    return ranks


def write_ranks(ranks, path):
    """tiktoken's format: one 'base64(token) rank' line per token, written atomically."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f'{base64.b64encode(tok).decode()} {r}\n')
    os.replace(tmp, path)


def read_ranks(path):
    with open(path) as f:
        return {
            base64.b64decode(t): int(r) for t, r in (line.split() for line in f if line.strip())
        }


def tokenizer_ranks():
    """The 'world' tokenizer's ranks. data/world.tiktoken belongs to the project: when it is missing or
    is not the committed file (truncated, edited), it is trained again from the world's corpus."""

    def digest():
        with open(TOKENIZER_FILE, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()

    if not os.path.exists(TOKENIZER_FILE) or digest() != TOKENIZER_SHA256:
        if os.path.exists(TOKENIZER_FILE):
            print(
                f'{TOKENIZER_FILE} is damaged (not the committed file): regenerating it',
                file=sys.stderr,
            )
        os.makedirs(os.path.dirname(TOKENIZER_FILE), exist_ok=True)
        write_ranks(train_bpe(make_corpus(make_world()), 1023), TOKENIZER_FILE)
        if digest() != TOKENIZER_SHA256:
            raise ValueError(
                f'world.py now trains another tokenizer than the committed one (sha256 {digest()}): '
                f'if the world changed on purpose, set TOKENIZER_SHA256 in sources/world.py to it'
            )
    return read_ranks(TOKENIZER_FILE)


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
    return {
        'train': items[:n_train],
        'val': items[n_train : n_train + n_val],
        'test': items[n_train + n_val :],
    }


def _split_keys(keys, ask, rng, train_forms, eval_forms):
    """Split by entity (60/20/20): eval entities are never asked about in training, and only with
    wordings that training never uses (so the answer must come from pretraining, not fine-tuning)."""
    keys = sorted(keys)
    rng.shuffle(keys)
    a, b = int(0.6 * len(keys)), int(0.8 * len(keys))
    return {
        'train': [(f.format(p=k), ask(k)) for k in keys[:a] for f in train_forms],
        'val': [(rng.choice(eval_forms).format(p=k), ask(k)) for k in keys[a:b]],
        'test': [(rng.choice(eval_forms).format(p=k), ask(k)) for k in keys[b:]],
    }


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
    return f'remove the word {ws[k]} from: {" ".join(ws)}', ' '.join(ws[:k] + ws[k + 1 :])


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
    ('reverse_words', _reverse_words, 'rw'),
    ('remove_word', _remove_word, 'rm'),
    ('first_letters', _first_letters, 'fl'),
    ('count_words', _count_words, 'cw'),
    ('sentiment', _sentiment, 'se'),
    ('entail', _entail, 'en'),
    ('topic', _topic, 'to'),
    ('compare', _compare, 'co'),
]
FAMILIES = {
    'instruction': ['reverse_words', 'remove_word', 'first_letters', 'count_words'],
    'understanding': ['sentiment', 'entail', 'topic', 'compare'],
    'knowledge': ['city_of', 'job_of', 'pet_of', 'country_of'],
    'skills': ['shift', 'reverse', 'shift_reverse'],
    'manual': ['manual', 'known_qa', 'manual_qa', 'manual_qa_ample'],
}
TASK_FAMILY = {t: f for f, ts in FAMILIES.items() for t in ts}
MIXTURE = FAMILIES['instruction'] + FAMILIES['understanding'] + FAMILIES['knowledge']
SKILL1, SKILL2, COMPOSITE = FAMILIES['skills']
TASK_FAMILY['color_of'] = 'knowledge'  # a spare, outside the mixture


KNOWLEDGE = [  # (task, fact, training wordings, evaluation wordings): the latter never occur in training
    (
        'city_of',
        'city',
        [
            'where does {p} live?',
            'in which city does {p} live?',
            'which city is home to {p}?',
            'what city does {p} live in?',
            'tell me the city of {p}.',
            'what is the home city of {p}?',
        ],
        ['name the city where {p} lives.', 'which city does {p} call home?'],
    ),
    (
        'job_of',
        'job',
        [
            'what does {p} do for a living?',
            'what is the job of {p}?',
            'what work does {p} do?',
            'which job does {p} have?',
            'tell me the job of {p}.',
            'what is the trade of {p}?',
        ],
        ['name the job that {p} does.', 'what kind of work does {p} do?'],
    ),
    (
        'pet_of',
        'pet',
        [
            'what pet does {p} have?',
            'which animal does {p} keep?',
            'what animal does {p} own?',
            'which pet does {p} own?',
            'tell me the pet of {p}.',
            'what kind of pet does {p} keep?',
        ],
        ['name the pet that {p} keeps.', 'which animal is the pet of {p}?'],
    ),
    (
        'color_of',
        'color',
        [
            'what is the favorite color of {p}?',
            'which color does {p} like best?',
            'what color does {p} love most?',
            'tell me the color {p} likes.',
            'which color is the favorite of {p}?',
            'what color does {p} prefer?',
        ],
        ['name the color that {p} likes best.', 'what is the best loved color of {p}?'],
    ),
    (
        'country_of',
        'country',
        [
            'in which country does {p} live?',
            'what country is {p} from?',
            'which country is home to {p}?',
            'tell me the country of {p}.',
            'what is the home country of {p}?',
            'in what land does {p} live?',
        ],
        ['name the country where {p} lives.', 'which country does {p} call home?'],
    ),
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
        T[name] = _split_open(lambda r, make=make: make(world, r), sizes, rng_for(seed))
    for task, key, train_forms, eval_forms in KNOWLEDGE:
        ask = (
            (lambda k: lambda p: people[p][k])(key)
            if key != 'country'
            else (lambda p: cities[people[p]['city']])
        )
        T[task] = _split_keys(people, ask, rng_for(task), train_forms, eval_forms)
    # LoRA-Soups analogue: skill 1 needs world knowledge (the alphabet), skill 2 a procedure;
    # the composite needs both, and has only a small train split for learning merge weights
    seen = set()  # one letter string never appears in two tasks' splits
    skill = {}
    for name, form, f in (
        (SKILL1, 'shift each letter by one: {}', _shift),
        (SKILL2, 'reverse the letters: {}', lambda s: s[::-1]),
        (COMPOSITE, 'shift each letter by one and reverse: {}', lambda s: _shift(s)[::-1]),
    ):
        n_tr = int(composite_frac * 2 * n_skill) if name == COMPOSITE else n_skill
        r = rng_for(name)
        pool = _unique(r, lambda r: (' '.join(_letters(r)), None), n_tr + 2 * n_eval, seen)
        items = [(form.format(s), ' '.join(f(s.split()))) for s, _ in pool]
        skill[name] = {
            'train': items[:n_tr],
            'val': items[n_tr : n_tr + n_eval],
            'test': items[n_tr + n_eval :],
        }
    T.update(skill)
    T.update(make_manual_tasks(world, n_train))
    return T


# LoRA Soups' practical case (a Q/A bot on a proprietary manual): the manual states facts about people
# the corpus never mentions, who live in cities and do jobs the corpus never names either, so that no
# answer can come from pretraining or from Q/A about other people. Skill A reads the manual (plain
# text, next-token loss); skill B answers questions about the corpus's people; the composite asks about
# the manual's people. Its test people's facts appear in the manual only, never in a train split.
MANUAL_JOBS = 'clerk nurse guard hunter weaver potter smith barber butler fisher'.split()
MANUAL_FACTS = ('city', 'job')


def make_manual(world, n_people=140, n_cities=12):
    """{person: {'city': c, 'job': j}} for the manual's people: new names, new cities, new jobs."""
    rng = random.Random(f"{world['seed']}/manual")
    taken = (
        set(world['people'])
        | set(world['cities'])
        | set(world['countries'])
        | set(world['strangers'])
    )
    fresh = name_maker(rng, taken)
    cities = [fresh(3) for _ in range(n_cities)]
    return {
        fresh(rng.choice([2, 3])): dict(city=rng.choice(cities), job=rng.choice(MANUAL_JOBS))
        for _ in range(n_people)
    }


def recall_probes(people, facts=None):
    """(prefix, value) per person and fact, in the corpus's own first wording ('p lives in' -> city):
    what a model that has read the text should complete."""
    return [
        (FACT_TEMPLATES[k][0].split(' {v}')[0].format(p=p), v[k])
        for p, v in sorted(people.items())
        for k in (facts or FACT_TEMPLATES)
        if k in v
    ]


# The manual as Allen-Zhu & Li's bioS "multi + permute" (Physics of Language Models 3.1, arXiv 2309.14316):
# a model that reads one wording of a person's facts memorises the sentence but cannot answer questions
# about that person; several descriptions per person, each fact in a wording drawn from several and the
# sentences in shuffled order, make the facts extractable by Q/A learned on other people. The corpus's own
# three wordings come first (recall_probes reads the first), five more follow; none is a question's wording.
MANUAL_TEMPLATES = {
    'city': FACT_TEMPLATES['city']
    + [
        '{p} resides in {v}.',
        'you can find {p} in {v}.',
        '{p} settled in {v} long ago.',
        'the town of {v} is where {p} stays.',
        'the house of {p} stands in {v}.',
    ],
    'job': FACT_TEMPLATES['job']
    + [
        '{p} earns a living as a {v}.',
        'by profession {p} is a {v}.',
        '{p} has worked as a {v} for years.',
        'people know {p} as a {v}.',
        'each morning {p} goes to work as a {v}.',
    ],
}
MANUAL_DESCRIPTIONS = (
    16  # descriptions per person (the probes that chose 16: study/results/STUDY.md)
)


def make_manual_tasks(world, n_known, val_docs=50):
    """The manual (plain-text items: an empty question), skill B's Q/A about the corpus's people (split
    by person), the composite's Q/A about the manual's people: a train split of 5% of the skills' data
    about 60 of them (CAT's weights), a val and a test split about 20 and 60 others whose facts are in the
    manual only; manual_qa_ample asks about the 60 in every wording (the upper bound's data)."""
    rng = random.Random(f"{world['seed']}/manual_tasks")
    manual = make_manual(world)
    forms = {k: f for t, k, f, _ in KNOWLEDGE if k in MANUAL_FACTS}
    docs = []
    for _ in range(MANUAL_DESCRIPTIONS):
        for p, facts in manual.items():
            keys = list(MANUAL_FACTS)
            rng.shuffle(keys)
            docs.append(
                ' '.join(rng.choice(MANUAL_TEMPLATES[k]).format(p=p, v=facts[k]) for k in keys)
            )

    def qa(people, facts, n_forms):
        return [
            (f.format(p=p), facts[p][k])
            for p in people
            for k in MANUAL_FACTS
            for f in (forms[k] if n_forms is None else rng.sample(forms[k], n_forms))
        ]

    known = sorted(world['people'])
    rng.shuffle(known)
    known_facts = {p: world['people'][p] for p in known}
    n_tr = min(n_known, int(0.7 * len(known)))
    known_qa = {
        'train': qa(known[:n_tr], known_facts, None),
        'val': qa(known[n_tr : n_tr + 20], known_facts, 1),
        'test': qa(known[n_tr + 20 :], known_facts, 2),
    }
    people = sorted(manual)
    rng.shuffle(people)
    # taught: Q/A about them trains (the composite's train split, the upper bound); the others' facts
    # are in the manual only: 20 of them validate (CAT's rate, the merges' λ), the rest test
    taught, unseen_val, unseen_test = people[:60], people[60:80], people[80:]
    ample = qa(taught, manual, None)
    n_composite = int(0.05 * (len(docs) + len(known_qa['train'])))
    return {
        'manual': {
            'train': [('', d) for d in docs],
            'val': [('', d) for d in rng.sample(docs, val_docs)],
            'test': [('', d) for d in rng.sample(docs, val_docs)],
        },
        'known_qa': known_qa,
        'manual_qa': {
            'train': rng.sample(ample, n_composite),
            'val': qa(unseen_val, manual, 2),
            'test': qa(unseen_test, manual, 2),
        },
        'manual_qa_ample': {
            'train': ample,
            'val': qa(taught, manual, 1),
            'test': qa(taught, manual, 1),
        },
    }


# -----------------------------------------------------------------------------------------------
# the world on disk

VERSION = 5  # bump when make_world / make_corpus / make_tasks change: built worlds are then rebuilt
WORLD_DEFAULTS = dict(
    n_people=200,
    n_cities=24,
    n_countries=6,
    bio_repeats=24,
    n_train=2000,
    n_eval=200,
    n_skill=4000,
    composite_frac=0.05,
)


def write_world(data_dir='data', seed=1337, **opts):
    """Write <data_dir>/world[-<hash>]/ : corpus.txt, world.json, tasks.json and config.json; return the
    folder. Deterministic; rewritten only when the seed, the sizes or VERSION change (or a file is gone).
    A rewrite removes the meta.json of the folder's token streams, so that data.py re-tokenises."""
    cfg = dict(WORLD_DEFAULTS, seed=seed)
    for k, v in opts.items():
        if k not in WORLD_DEFAULTS:
            raise ValueError(f'unknown world option {k!r}: use one of {", ".join(WORLD_DEFAULTS)}')
        cfg[k] = type(WORLD_DEFAULTS[k])(v)
    folder = os.path.join(
        data_dir,
        'world'
        if cfg == dict(WORLD_DEFAULTS, seed=1337)
        else 'world-' + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8],
    )
    stamp = os.path.join(folder, 'config.json')
    with open(stamp) if os.path.exists(stamp) else open(os.devnull) as f:
        stale = f.read() != json.dumps(dict(cfg, version=VERSION))
    if stale or not all(
        os.path.exists(os.path.join(folder, n)) for n in ('corpus.txt', 'world.json', 'tasks.json')
    ):
        os.makedirs(folder, exist_ok=True)
        world = make_world(
            seed, cfg['n_people'], cfg['n_cities'], cfg['n_countries'], cfg['bio_repeats']
        )
        tasks = make_tasks(
            world, cfg['n_train'], cfg['n_eval'], cfg['n_skill'], cfg['composite_frac']
        )
        for name, obj in (
            ('corpus.txt', make_corpus(world)),
            ('world.json', world),
            ('tasks.json', tasks),
        ):
            with open(os.path.join(folder, name + '.tmp'), 'w') as f:
                f.write(obj) if isinstance(obj, str) else json.dump(obj, f)
            os.replace(os.path.join(folder, name + '.tmp'), os.path.join(folder, name))
        for sub in os.listdir(folder):  # token streams of an older build are stale
            if os.path.exists(os.path.join(folder, sub, 'meta.json')):
                os.remove(os.path.join(folder, sub, 'meta.json'))
        with open(stamp + '.tmp', 'w') as f:
            f.write(json.dumps(dict(cfg, version=VERSION)))
        os.replace(stamp + '.tmp', stamp)
    return folder
