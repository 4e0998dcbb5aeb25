import hashlib
import json
import math
import os

import pytest
import torch

import data
import world


@pytest.fixture(scope='module')
def world_dir(tmp_path_factory):
    return data.build_world(str(tmp_path_factory.mktemp('w')))


@pytest.fixture(scope='module')
def tasks(world_dir):
    with open(os.path.join(world_dir, 'tasks.json')) as f:
        return json.load(f)


def _digest(folder):
    h = hashlib.sha256()
    for name in ('corpus.txt', 'tasks.json', 'world.json', 'world/train.bin', 'world/val.bin', 'world/meta.json'):
        with open(os.path.join(folder, name), 'rb') as f:
            h.update(f.read())
    return h.hexdigest()


def test_world_is_deterministic(world_dir, tmp_path):
    assert _digest(data.build_world(str(tmp_path / 'again'))) == _digest(world_dir)
    other = data.build_world(str(tmp_path / 'other'), seed=7)
    with open(os.path.join(other, 'corpus.txt')) as f, open(os.path.join(world_dir, 'corpus.txt')) as g:
        assert f.read() != g.read()
    size = sum(os.path.getsize(os.path.join(world_dir, n)) for n in ('corpus.txt', 'tasks.json'))
    assert 0.5e6 < size < 10e6  # "a few MB"


def test_committed_tokenizer_is_what_data_py_trains():
    ranks = world.train_bpe(world.make_corpus(world.make_world()), 1023)
    assert ranks == world.read_ranks(world.TOKENIZER_FILE)


@pytest.mark.parametrize('name', ['world', 'world-bytes'])
def test_tokenizer_round_trip(name):
    enc = data.get_tokenizer(name)
    text = "bemiso lies in mosesi.\n38 + 18 = 56. Q: It's ünïcode ✓, tabs\tand  spaces\n"
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert max(ids) < enc.n_vocab
    stop = enc.eot_token
    assert enc.decode([stop]) == data.EOT and stop == enc.n_vocab - 1
    assert enc.n_vocab == (1024 if name == 'world' else 257)
    if name == 'world':  # the BPE compresses its own corpus well beyond bytes
        assert len(enc.encode_ordinary('vimobi works as a miner.')) < 12
        assert [enc.decode([i]) for i in enc.encode_ordinary(' 1234')] == [' 1', '2', '3', '4']


def test_unknown_tokenizer_and_offline_gpt2(monkeypatch):
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
        data.get_tokenizer('nope')
    def offline(name):
        raise ConnectionError('no network')
    monkeypatch.setattr(data.tiktoken, 'get_encoding', offline)
    monkeypatch.delitem(data._TOKENIZERS, 'gpt2', raising=False)
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', '/some/cache')
    with pytest.raises(ValueError, match=r"could not load 'gpt2' \(ConnectionError; offline\?\).*/some/cache") as e:
        data.get_tokenizer('gpt2')
    assert '\n' not in str(e.value)


def test_splits_are_disjoint(tasks):
    assert len(data.MIXTURE) >= 9
    assert {data.TASK_FAMILY[t] for t in data.MIXTURE} == {'instruction', 'understanding', 'knowledge'}
    for t, sp in tasks.items():
        qs = {s: {q for q, _ in sp[s]} for s in ('train', 'val', 'test')}
        assert all(qs.values()), t
        assert not (qs['train'] & qs['val']) and not (qs['train'] & qs['test']) and not (qs['val'] & qs['test']), t
    # skills: no letter string is shared between the composite and the skills' training data
    strings = lambda t, s: {q.split(': ')[1] for q, _ in tasks[t][s]}
    assert not strings(data.COMPOSITE, 'test') & (strings(data.SKILL1, 'train') | strings(data.SKILL2, 'train'))
    n_comp = len(tasks[data.COMPOSITE]['train'])
    n_skills = len(tasks[data.SKILL1]['train']) + len(tasks[data.SKILL2]['train'])
    assert n_comp == pytest.approx(0.05 * n_skills, rel=0.01)


def test_knowledge_questions_are_new_entities_and_wordings(tasks, world_dir):
    with open(os.path.join(world_dir, 'world.json')) as f:
        people = json.load(f)['people']
    with open(os.path.join(world_dir, 'corpus.txt')) as f:
        corpus = f.read()
    def form(q):  # the wording of a question, with its person taken out
        (p,) = [w for w in q.rstrip('.?').split() if w in people]
        return q.replace(p, '{p}')
    for t in data.FAMILIES['knowledge'] + ['color_of']:
        ent = {s: {w for q, _ in tasks[t][s] for w in q.rstrip('.?').split() if w in people} for s in tasks[t]}
        assert not ent['train'] & ent['test'] and not ent['train'] & ent['val'] and len(ent['test']) >= 30
        train_forms = {form(q) for q, _ in tasks[t]['train']}
        assert len(train_forms) >= 4
        for q, a in tasks[t]['test'] + tasks[t]['val']:
            assert form(q) not in train_forms
            assert all(chunk.strip() not in corpus for chunk in form(q).split('{p}') if len(chunk.strip()) > 8), q
            assert a in corpus  # the answer is stated in pretraining text only


def test_answer_masking_on_labels(world_dir):
    ds = data.get_dataset('task:city_of', 64, data_dir=os.path.dirname(world_dir))
    enc = ds.tokenizer
    x, y = ds.get_batch('train', 8, torch.Generator().manual_seed(0))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] <= 64
    by_prompt = {enc.decode(p): enc.decode(a) for p, a in ds.data['city_of']['train']}
    for xr, yr in zip(x.tolist(), y.tolist()):
        first = next(i for i, v in enumerate(yr) if v != -1)
        last = max(i for i, v in enumerate(yr) if v != -1)
        assert all(v != -1 for v in yr[first:last + 1]) and all(v == -1 for v in yr[last + 1:])
        prompt = enc.decode(xr[:first + 1])
        assert prompt.startswith('Q: ') and prompt.endswith('\nA:')
        assert enc.decode(yr[first:last + 1]) == by_prompt[prompt]  # labels = answer + stop, nothing else
        assert by_prompt[prompt].endswith(data.EOT) and yr[last] == ds.stop_token
        assert xr[first + 1:last + 1] == yr[first:last]  # each label is the next input token


def test_world_stream_batches(world_dir):
    ds = data.get_dataset('world', 32, data_dir=os.path.dirname(world_dir))
    x, y = ds.get_batch('train', 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1]) and ds.tasks == [] and ds.vocab_size == 1024
    x2, _ = ds.get_batch('train', 4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_bin_meta_tokenizer_mismatch(tmp_path):
    folder = str(tmp_path / 's')
    data.write_stream(folder, 'the cat sat.\n' * 200, data.get_tokenizer('world'), 'world')
    with pytest.raises(ValueError, match=r"tokenised with 'world' but tokenizer 'world-bytes' was requested") as e:
        data.StreamDataset(folder, 16, data.get_tokenizer('world-bytes'), 'world-bytes')
    assert '\n' not in str(e.value)
    with open(os.path.join(folder, 'meta.json')) as f:
        meta = json.load(f)
    meta['vocab_size'] = 50257
    with open(os.path.join(folder, 'meta.json'), 'w') as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match='says vocab_size=50257 but tokenizer'):
        data.StreamDataset(folder, 16, data.get_tokenizer('world'), 'world')


def test_plain_text_parser(tmp_path):
    path = tmp_path / 'input.txt'
    path.write_text('First Citizen:\nBefore we proceed any further, hear me speak.\n' * 100)
    ds = data.get_dataset('text', 16, tokenizer='world-bytes', data_dir=str(tmp_path), path=str(path))
    assert sum(ds.meta['tokens'].values()) == len(path.read_bytes())  # bytes tokenizer: one id per byte
    x, y = ds.get_batch('val', 2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 16) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(FileNotFoundError, match=r'missing.txt not found: put the file there'):
        data.get_dataset('text', 16, data_dir=str(tmp_path), path=str(tmp_path / 'missing.txt'))


def test_alpaca_parser(tmp_path):
    rows = [{'instruction': f'Add {i} and 1.', 'input': '' if i % 2 else 'quickly', 'output': str(i + 1)}
            for i in range(60)]
    (tmp_path / 'a.json').write_text(json.dumps(rows))
    pairs = data.read_alpaca(str(tmp_path / 'a.json'))
    assert pairs[0] == ('Add 0 and 1.\nquickly', '1') and pairs[1] == ('Add 1 and 1.', '2')
    ds = data.get_dataset('alpaca', 32, data_dir=str(tmp_path), path=str(tmp_path / 'a.json'))
    sizes = {s: len(v) for s, v in ds.text['alpaca'].items()}
    assert sizes == {'train': 54, 'val': 3, 'test': 3} and ds.tasks == ['alpaca']
    (tmp_path / 'bad.json').write_text('{"instruction": ')
    with pytest.raises(ValueError, match='is not valid JSON'):
        data.read_alpaca(str(tmp_path / 'bad.json'))
    (tmp_path / 'bad2.json').write_text('[{"prompt": "x"}]')
    with pytest.raises(ValueError, match='Alpaca format'):
        data.read_alpaca(str(tmp_path / 'bad2.json'))


def test_e2e_parser(tmp_path):
    row = '"name[Inn {i}], food[Thai]","Inn {i} serves Thai food, ""cheap""."\n'
    csv_text = 'mr,ref\n' + ''.join(row.format(i=i) for i in range(5))
    for f in ('trainset.csv', 'devset.csv', 'testset_w_refs.csv'):
        (tmp_path / f).write_text(csv_text)
    expected = ('describe: name[Inn 1], food[Thai]', 'Inn 1 serves Thai food, "cheap".')
    assert data.read_e2e(str(tmp_path / 'devset.csv'))[1] == expected
    ds = data.get_dataset('e2e', 64, data_dir=str(tmp_path), path=str(tmp_path))
    assert {s: len(v) for s, v in ds.text['e2e'].items()} == {'train': 5, 'val': 5, 'test': 5}
    (tmp_path / 'devset.csv').unlink()
    with pytest.raises(FileNotFoundError, match='lacks the E2E val CSV'):
        data.get_dataset('e2e', 64, data_dir=str(tmp_path), path=str(tmp_path))
    (tmp_path / 'x.csv').write_text('meaning,text\na,b\n')
    with pytest.raises(ValueError, match='expected a CSV with columns mr,ref'):
        data.read_e2e(str(tmp_path / 'x.csv'))


def test_unknown_dataset_and_option(world_dir):
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        data.get_dataset('nope', 64, data_dir=os.path.dirname(world_dir))
    with pytest.raises(ValueError, match="unknown world option 'n_peeple'"):
        data.get_dataset('world', 64, data_dir=os.path.dirname(world_dir), n_peeple=3)


def test_accuracy_on_planted_predictions():
    stop = 9
    answers = [[1, 2, stop], [3, stop], [4, 5, stop], [6, stop]]
    preds = [[1, 2, stop, stop], [3, 7, stop], [4, 5], [6, stop, 1]]  # right, wrong, never stops, right
    assert data.accuracy(preds, answers, stop) == 0.5
    with pytest.raises(ValueError, match='3 predictions for 4 answers'):
        data.accuracy(preds[:3], answers, stop)


class PlantedModel(torch.nn.Module):
    """Answers every item whose prompt is in `right` correctly, the others with a wrong token;
    the logits are uniform, so the loss is log(V) exactly."""

    def __init__(self, ds, right, vocab):
        super().__init__()
        self.answers, self.right, self.vocab = {}, right, vocab
        for items in ds.data.values():
            for p, a in items['test']:
                self.answers[tuple(p)] = a
        self.calls = []

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab), None

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, stop_token=None):
        assert temperature == 0 and stop_token is not None
        self.calls.append(idx.shape)
        rows = []
        for p in idx.tolist():
            a = self.answers[tuple(p)] if tuple(p) in self.right else [0, stop_token]
            rows.append(p + (a + [stop_token] * max_new_tokens)[:max_new_tokens])
        return torch.tensor(rows)


def test_evaluate_on_planted_predictions(world_dir):
    ds = data.get_dataset('composite', 64, data_dir=os.path.dirname(world_dir))
    assert ds.tasks == [data.SKILL1, data.SKILL2, data.COMPOSITE] and ds.train_tasks == [data.COMPOSITE]
    right = {tuple(p) for t in ds.tasks for p, _ in ds.data[t]['test'][:30][::3]}  # 10 of the first 30 per task
    model = PlantedModel(ds, right, ds.vocab_size)
    res = ds.evaluate(model, split='test', max_items=30, batch_size=8)
    for t in ds.tasks:
        assert res[t]['n'] == 30 and res[t]['acc'] == pytest.approx(1 / 3)
        assert res[t]['loss'] == pytest.approx(math.log(ds.vocab_size), rel=1e-5)
    assert res['avg']['acc'] == pytest.approx(1 / 3) and res['avg']['n'] == 90
    assert all(shape[0] <= 8 for shape in model.calls)  # batched, and each batch one prompt length
    table = data.format_results(res)
    assert 'shift_reverse' in table and '0.333' in table and table.splitlines()[-1].startswith('avg')


def test_evaluate_runs_with_the_real_model(world_dir):
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    ds = data.get_dataset('mixture', 64, data_dir=os.path.dirname(world_dir))
    model = GPT(GPTConfig(block_size=64, vocab_size=ds.vocab_size, n_layer=1, n_head=2, n_embd=32))
    res = ds.evaluate(model, max_items=4)
    assert set(res) == set(data.MIXTURE) | {'avg'} and all(0 <= r['acc'] <= 1 for r in res.values())
    assert abs(res['avg']['loss'] - math.log(ds.vocab_size)) < 1.0  # an untrained model is near uniform
