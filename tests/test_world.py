import collections
import hashlib
import json
import os
import random
import re

import pytest

import data
from sources import world

# sha256 of the default world's files: checkpoints and published results were trained on exactly these
# bytes. A change here is a new world: bump world.VERSION (and say so), never edit these silently.
DEFAULT_WORLD_SHA256 = {
    'corpus.txt': '17f0d39e9bbd2bf663f17fe3f85813ca05dabb17d95264fa15ce7aa0aa487c88',
    'tasks.json': '88dd862a36ae42c068f0708a557e453d4061f0e13da9846b1e70a04ca0fc3b1b',
    'world.json': '063a34bde876d233d0d316f2c14aefb7feef3c98e4b68e18d7364b89a7840f0b',
}


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module')
def world_dir(tmp_path_factory):
    return world.write_world(str(tmp_path_factory.mktemp('w')))


@pytest.fixture(scope='module')
def tasks(world_dir):
    with open(os.path.join(world_dir, 'tasks.json')) as f:
        return json.load(f)


def test_default_world_is_byte_identical(world_dir, tmp_path):
    assert {
        name: sha256(os.path.join(world_dir, name)) for name in DEFAULT_WORLD_SHA256
    } == DEFAULT_WORLD_SHA256
    other = world.write_world(str(tmp_path), seed=7)
    assert sha256(os.path.join(other, 'corpus.txt')) != DEFAULT_WORLD_SHA256['corpus.txt']
    size = sum(os.path.getsize(os.path.join(world_dir, n)) for n in ('corpus.txt', 'tasks.json'))
    assert 0.5e6 < size < 10e6  # "a few MB"


def test_a_missing_world_file_is_written_again(tmp_path):
    small = dict(n_people=30, bio_repeats=1, n_train=40, n_eval=10, n_skill=60)
    folder = world.write_world(str(tmp_path), **small)
    before = {
        n: sha256(os.path.join(folder, n)) for n in ('corpus.txt', 'tasks.json', 'world.json')
    }
    os.remove(os.path.join(folder, 'world.json'))
    assert world.write_world(str(tmp_path), **small) == folder
    assert {n: sha256(os.path.join(folder, n)) for n in before} == before


def test_committed_tokenizer_is_what_world_trains():
    ranks = world.train_bpe(world.make_corpus(world.make_world()), 1023)
    assert ranks == world.read_ranks(world.TOKENIZER_FILE)
    assert sha256(world.TOKENIZER_FILE) == world.TOKENIZER_SHA256


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'binary', 'one rank changed'])
def test_damaged_tokenizer_file_is_regenerated(damage, tmp_path, monkeypatch, capsys):
    """The project owns data/world.tiktoken: a damaged copy is trained again, with one line saying so,
    never a tiktoken panic."""
    with open(world.TOKENIZER_FILE, 'rb') as f:
        good = f.read()
    path = tmp_path / 'world.tiktoken'
    path.write_bytes(
        {
            'truncated': good[: len(good) // 2],
            'empty': b'',
            'binary': random.Random(0).randbytes(3000),
            'one rank changed': good.replace(b' 300\n', b' 301\n', 1),
        }[damage]
    )
    monkeypatch.setattr(world, 'TOKENIZER_FILE', str(path))
    monkeypatch.delitem(data._TOKENIZERS, 'world', raising=False)
    enc = data.get_tokenizer('world')
    err = capsys.readouterr().err
    assert (
        err.count('\n') == 1
        and str(path) in err
        and 'is damaged' in err
        and 'regenerating it' in err
    )
    assert 'Traceback' not in err and 'panic' not in err
    assert path.read_bytes() == good and not os.path.exists(str(path) + '.tmp')
    text = 'vimobi works as a miner.'
    assert enc.n_vocab == 1024 and enc.decode(enc.encode_ordinary(text)) == text
    monkeypatch.delitem(data._TOKENIZERS, 'world')
    data.get_tokenizer('world')  # a whole file is read as it is, silently
    assert capsys.readouterr().err == ''
    monkeypatch.delitem(data._TOKENIZERS, 'world')


def test_missing_tokenizer_file_is_regenerated_silently(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(world, 'TOKENIZER_FILE', str(tmp_path / 'sub' / 'world.tiktoken'))
    assert world.tokenizer_ranks() == world.read_ranks(str(tmp_path / 'sub' / 'world.tiktoken'))
    assert capsys.readouterr().err == ''
    assert sha256(world.TOKENIZER_FILE) == world.TOKENIZER_SHA256


def test_a_changed_world_names_the_tokenizer_hash_to_update(tmp_path, monkeypatch):
    monkeypatch.setattr(world, 'TOKENIZER_FILE', str(tmp_path / 'world.tiktoken'))
    # as if world.py had changed the corpus
    monkeypatch.setattr(world, 'TOKENIZER_SHA256', '0' * 64)
    with pytest.raises(
        ValueError,
        match=r'world.py now trains another tokenizer.*set TOKENIZER_SHA256 in sources/world.py '
        r'to it',
    ) as e:
        world.tokenizer_ranks()
    assert '\n' not in str(e.value)


def test_splits_are_disjoint(tasks):
    assert len(world.MIXTURE) == 12 and len(tasks) == 20 and set(world.MIXTURE) < set(tasks)
    assert {world.TASK_FAMILY[t] for t in world.MIXTURE} == {
        'instruction',
        'understanding',
        'knowledge',
    }
    for t, sp in tasks.items():
        if t in world.FAMILIES['manual']:  # split by person, not by question: test_manual_*
            continue
        qs = {s: {q for q, _ in sp[s]} for s in ('train', 'val', 'test')}
        assert all(qs.values()), t
        assert (
            not (qs['train'] & qs['val'])
            and not (qs['train'] & qs['test'])
            and not (qs['val'] & qs['test'])
        ), t
    # skills: no letter string is shared between the composite and the skills' training data
    strings = lambda t, s: {q.split(': ')[1] for q, _ in tasks[t][s]}
    assert not strings(world.COMPOSITE, 'test') & (
        strings(world.SKILL1, 'train') | strings(world.SKILL2, 'train')
    )
    n_comp = len(tasks[world.COMPOSITE]['train'])
    n_skills = len(tasks[world.SKILL1]['train']) + len(tasks[world.SKILL2]['train'])
    assert n_comp == pytest.approx(0.05 * n_skills, rel=0.01)


def test_knowledge_questions_are_new_entities_and_wordings(tasks, world_dir):
    with open(os.path.join(world_dir, 'world.json')) as f:
        people = json.load(f)['people']
    with open(os.path.join(world_dir, 'corpus.txt')) as f:
        corpus = f.read()

    def form(q):  # the wording of a question, with its person taken out
        (p,) = [w for w in q.rstrip('.?').split() if w in people]
        return q.replace(p, '{p}')

    for t in world.FAMILIES['knowledge'] + ['color_of']:
        ent = {
            s: {w for q, _ in tasks[t][s] for w in q.rstrip('.?').split() if w in people}
            for s in tasks[t]
        }
        assert (
            not ent['train'] & ent['test']
            and not ent['train'] & ent['val']
            and len(ent['test']) >= 30
        )
        train_forms = {form(q) for q, _ in tasks[t]['train']}
        assert len(train_forms) >= 4
        for q, a in tasks[t]['test'] + tasks[t]['val']:
            assert form(q) not in train_forms
            assert all(
                chunk.strip() not in corpus
                for chunk in form(q).split('{p}')
                if len(chunk.strip()) > 8
            ), q
            assert a in corpus  # the answer is stated in pretraining text only


@pytest.fixture(scope='module')
def manual(world_dir):
    with open(os.path.join(world_dir, 'world.json')) as f:
        return world.make_manual(json.load(f))


def asked_about(items, people):
    return {w for q, _ in items for w in q.rstrip('.?').split() if w in people}


def test_manual_test_facts_are_in_the_manual_only(tasks, manual):
    test = asked_about(tasks['manual_qa']['test'], manual)
    val = asked_about(tasks['manual_qa']['val'], manual)
    assert len(test) == 60 and len(val) == 20 and not test & val
    taught = asked_about(tasks['manual_qa_ample']['train'], manual)
    assert taught == set(manual) - test - val and len(taught) == 60
    for t in ('manual_qa', 'manual_qa_ample', 'known_qa'):
        assert not (test | val) & asked_about(tasks[t]['train'], manual), t
    assert not test & asked_about(
        tasks['manual_qa']['val'] + tasks['manual_qa_ample']['val'], manual
    )
    docs = [d for q, d in tasks['manual']['train']]
    assert all(q == '' for q, _ in tasks['manual']['train'])
    for q, a in tasks['manual_qa']['test']:
        (p,) = asked_about([(q, a)], manual)
        assert a in manual[p].values()
        kind = next(k for k in world.MANUAL_FACTS if manual[p][k] == a)
        stated = [
            d for d in docs if any(t.format(p=p, v=a) in d for t in world.MANUAL_TEMPLATES[kind])
        ]
        # the manual states it in every description of p, in more than one wording
        assert len(stated) == world.MANUAL_DESCRIPTIONS, (q, a)
        assert (
            len(
                {t for t in world.MANUAL_TEMPLATES[kind] for d in stated if t.format(p=p, v=a) in d}
            )
            >= 3
        )


def test_manual_descriptions_vary_wording_and_order(tasks, manual):
    docs = [d for _, d in tasks['manual']['train']]
    assert len(docs) == world.MANUAL_DESCRIPTIONS * len(manual)
    templates = [t for k in world.MANUAL_FACTS for t in world.MANUAL_TEMPLATES[k]]
    wordings = collections.Counter(
        t
        for d in docs
        for p, f in manual.items()
        if p in d.split()
        for k in f
        for t in templates
        if t.format(p=p, v=f[k]) in d
    )
    assert len(wordings) == len(templates)  # every wording is used
    assert max(wordings.values()) < 2 * min(wordings.values())  # about evenly
    cities = {f['city'] for f in manual.values()}
    city_first = [bool(cities & set(d.split('. ')[0].split())) for d in docs]
    assert 0.4 < sum(city_first) / len(docs) < 0.6  # the order of the sentences is shuffled


def test_manual_composite_train_split_is_5_percent_of_the_skills(tasks):
    n_comp = len(tasks['manual_qa']['train'])
    n_skills = len(tasks['manual']['train']) + len(tasks['known_qa']['train'])
    assert 0 < n_comp <= 0.05 * n_skills and n_comp == int(0.05 * n_skills)
    assert set(map(tuple, tasks['manual_qa']['train'])) <= set(
        map(tuple, tasks['manual_qa_ample']['train'])
    )


def test_manual_people_cities_and_jobs_are_new_to_the_corpus(world_dir, manual):
    with open(os.path.join(world_dir, 'corpus.txt')) as f:
        words = set(re.findall(r'[a-z]+', f.read()))
    new = set(manual) | {v[k] for v in manual.values() for k in world.MANUAL_FACTS}
    assert (
        len({v['city'] for v in manual.values()}) >= 10
        and len({v['job'] for v in manual.values()}) >= 8
    )
    assert not new & words, sorted(new & words)


def test_recall_probes_are_the_corpus_first_wording():
    people = {'bob': {'city': 'rome', 'job': 'nurse'}, 'al': {'pet': 'cat'}}
    assert world.recall_probes(people) == [
        ('al owns a', 'cat'),
        ('bob lives in', 'rome'),
        ('bob works as a', 'nurse'),
    ]
    assert world.recall_probes(people, ['city']) == [('bob lives in', 'rome')]


def test_unknown_world_option():
    with pytest.raises(ValueError, match="unknown world option 'n_peeple': use one of n_people"):
        world.write_world('unused', n_peeple=3)
