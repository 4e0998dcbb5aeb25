import json
import math
import os

import pytest
import torch

import data


@pytest.fixture(scope='module')
def world_dir(tmp_path_factory):
    return data.build_world(str(tmp_path_factory.mktemp('w') / 'data'))


@pytest.fixture(scope='module')
def mixture(world_dir):
    return data.get_dataset('mixture', 64, data_dir=os.path.dirname(world_dir))


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
    with pytest.raises(
        ValueError, match=r"could not load 'gpt2' \(ConnectionError; offline\?\).*/some/cache"
    ) as e:
        data.get_tokenizer('gpt2')
    assert '\n' not in str(e.value)


def test_answer_masking_on_labels(world_dir):
    ds = data.get_dataset('task:city_of', 64, data_dir=os.path.dirname(world_dir))
    enc = ds.tokenizer
    x, y = ds.get_batch('train', 8, torch.Generator().manual_seed(0))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] <= 64
    by_prompt = {enc.decode(p): enc.decode(a) for p, a in ds.data['city_of']['train']}
    for xr, yr in zip(x.tolist(), y.tolist()):
        first = next(i for i, v in enumerate(yr) if v != -1)
        last = max(i for i, v in enumerate(yr) if v != -1)
        assert all(v != -1 for v in yr[first : last + 1]) and all(v == -1 for v in yr[last + 1 :])
        prompt = enc.decode(xr[: first + 1])
        assert prompt.startswith('Q: ') and prompt.endswith('\nA:')
        # labels = answer + stop, nothing else
        assert enc.decode(yr[first : last + 1]) == by_prompt[prompt]
        assert by_prompt[prompt].endswith(data.EOT) and yr[last] == ds.stop_token
        assert xr[first + 1 : last + 1] == yr[first:last]  # each label is the next input token


def test_world_stream_batches(world_dir):
    ds = data.get_dataset('world', 32, data_dir=os.path.dirname(world_dir))
    x, y = ds.get_batch('train', 4, torch.Generator().manual_seed(0))
    assert (
        x.shape == (4, 32)
        and torch.equal(x[:, 1:], y[:, :-1])
        and ds.tasks == []
        and ds.vocab_size == 1024
    )
    x2, _ = ds.get_batch('train', 4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_bin_meta_tokenizer_mismatch(tmp_path):
    folder = str(tmp_path / 's')
    data.write_stream(folder, 'the cat sat.\n' * 200, data.get_tokenizer('world'), 'world')
    with pytest.raises(
        ValueError, match=r"tokenised with 'world' but tokenizer 'world-bytes' was requested"
    ) as e:
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
    ds = data.get_dataset(
        'text', 16, tokenizer='world-bytes', data_dir=str(tmp_path), path=str(path)
    )
    # bytes tokenizer: one id per byte
    assert sum(ds.meta['tokens'].values()) == len(path.read_bytes())
    x, y = ds.get_batch('val', 2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 16) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(FileNotFoundError, match=r'missing.txt not found: put the file there'):
        data.get_dataset('text', 16, data_dir=str(tmp_path), path=str(tmp_path / 'missing.txt'))


def test_alpaca_parser(tmp_path):
    rows = [
        {
            'instruction': f'Add {i} and 1.',
            'input': '' if i % 2 else 'quickly',
            'output': str(i + 1),
        }
        for i in range(60)
    ]
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
    with pytest.raises(FileNotFoundError, match='lacks devset.csv'):
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
    # right, wrong, never stops, right
    preds = [
        [1, 2, stop, stop],
        [3, 7, stop],
        [4, 5],
        [6, stop, 1],
    ]
    assert data.accuracy(preds, answers, stop) == 0.5
    with pytest.raises(ValueError, match='3 predictions for 4 answers'):
        data.accuracy(preds[:3], answers, stop)


class PlantedModel(torch.nn.Module):
    """A stand-in model whose greedy continuations are planted: reply(prompt ids, answer ids incl. stop)
    gives the tokens it generates (padded with token 0, which is not the stop token); its logits are
    uniform, so its answer-token loss is log(V) exactly."""

    def __init__(self, ds, reply, split='test'):
        super().__init__()
        self.answers = {tuple(p): a for items in ds.data.values() for p, a in items[split]}
        self.reply, self.vocab, self.calls = reply, ds.vocab_size, []

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab), None

    def generate(
        self, idx, max_new_tokens, temperature=1.0, top_k=None, stop_token=None, attention_mask=None
    ):
        assert temperature == 0 and stop_token is not None
        self.calls.append(idx.shape)
        rows = []
        for p, m in zip(idx.tolist(), attention_mask.tolist()):  # left padding: m is 0 there
            prompt = tuple(t for t, real in zip(p, m) if real)
            reply = self.reply(prompt, self.answers[prompt]) + [0] * max_new_tokens
            rows.append(p + reply[:max_new_tokens])
        return torch.tensor(rows)


def test_evaluate_on_planted_predictions(world_dir):
    ds = data.get_dataset('composite', 64, data_dir=os.path.dirname(world_dir))
    assert ds.tasks == [data.SKILL1, data.SKILL2, data.COMPOSITE] and ds.train_tasks == [
        data.COMPOSITE
    ]
    # 10 of the first 30 per task
    right = {tuple(p) for t in ds.tasks for p, _ in ds.data[t]['test'][:30][::3]}
    model = PlantedModel(ds, lambda p, a: a if p in right else [0, ds.stop_token])
    res = ds.evaluate(model, split='test', max_items=30, batch_size=8)
    for t in ds.tasks:
        assert res[t]['n'] == 30 and res[t]['acc'] == pytest.approx(1 / 3)
        assert res[t]['loss'] == pytest.approx(math.log(ds.vocab_size), rel=1e-5)
    assert res['avg']['acc'] == pytest.approx(1 / 3) and res['avg']['n'] == 90
    # 3 tasks x ceil(30 / 8)
    assert all(shape[0] <= 8 for shape in model.calls) and len(model.calls) == 12
    table = data.format_results(res)
    assert (
        'shift_reverse' in table and '0.333' in table and table.splitlines()[-1].startswith('avg')
    )


def test_plain_text_items_have_a_target_on_every_token_and_a_loss_only(world_dir):
    """An item whose question is '' (the manual) is plain text: its prompt is the stop token alone and
    every token of the text and the closing stop token is a target; evaluate() gives it a loss but no
    'acc', and the average accuracy is over the Q/A tasks only."""
    ds = data.get_dataset('manual_mix', 64, data_dir=os.path.dirname(world_dir))
    assert ds.train_tasks == ['manual', 'known_qa'] and ds.tasks == ['known_qa', 'manual_qa']
    stop, enc = ds.stop_token, ds.tokenizer
    (q, doc), (p, a) = ds.text['manual']['train'][0], ds.data['manual']['train'][0]
    assert q == '' and p == [stop] and a == enc.encode_ordinary(doc) + [stop]
    (_, ans), qa_item = ds.text['known_qa']['train'][0], ds.data['known_qa']['train'][0]
    x, y = ds.collate([(p, a), qa_item])
    assert (y[0] != -1).sum().item() == len(enc.encode_ordinary(doc)) + 1 and x[0, 0].item() == stop
    assert y[0, : len(a)].tolist() == a and enc.decode(x[0, 1 : len(a)].tolist()) == doc
    assert (y[1] != -1).sum().item() == len(
        enc.encode_ordinary(' ' + ans)
    ) + 1  # a Q/A item: its answer only
    # every known_qa item right, no manual_qa item
    right = {tuple(p) for p, _ in ds.data['known_qa']['test']}
    model = PlantedModel(ds, lambda p, a: a if p in right else [0, stop])
    res = ds.evaluate(model, max_items=10, batch_size=4, tasks=['manual', 'known_qa', 'manual_qa'])
    assert res['manual'] == {'loss': pytest.approx(math.log(ds.vocab_size), rel=1e-5), 'n': 10}
    assert res['known_qa']['acc'] == 1.0 and res['manual_qa']['acc'] == 0.0
    assert res['avg']['acc'] == 0.5 and res['avg']['n'] == 30
    assert res['avg']['loss'] == pytest.approx(math.log(ds.vocab_size), rel=1e-5)
    assert data.format_results(res).splitlines()[-1].split()[1:] == [
        '0.500',
        f'{math.log(ds.vocab_size):.3f}',
        '30',
    ]


def test_evaluate_scores_exactly_the_planted_answers_on_the_mixture(mixture):
    """Task j of the mixture gets exactly j+1 of its first 12 test items right, each followed by
    junk after its stop token (which must be cut off); every other item repeats the answer but never
    stops (which must count as wrong). A perfect model scores 1.0 on every task."""
    ds, n = mixture, 12
    stop = ds.stop_token
    right = {tuple(p) for j, t in enumerate(data.MIXTURE) for p, _ in ds.data[t]['test'][: j + 1]}
    model = PlantedModel(ds, lambda p, a: a + [5, 6] if p in right else a[:-1])
    res = ds.evaluate(model, max_items=n, batch_size=5)
    assert ds.tasks == data.MIXTURE and set(res) == set(data.MIXTURE) | {'avg'}
    for j, t in enumerate(data.MIXTURE):
        assert res[t]['n'] == n and res[t]['acc'] == pytest.approx((j + 1) / n), t
        assert res[t]['correct'] == [1] * (j + 1) + [0] * (n - j - 1), t  # per item, in item order
        assert res[t]['loss'] == pytest.approx(math.log(ds.vocab_size), rel=1e-5)
    assert (
        res['avg']['acc'] == pytest.approx(sum(range(1, 13)) / 12 / n) and res['avg']['n'] == 12 * n
    )
    perfect = ds.evaluate(PlantedModel(ds, lambda p, a: a + [stop, 7]), max_items=n, batch_size=5)
    assert all(r['acc'] == 1.0 for r in perfect.values())
    silent = ds.evaluate(PlantedModel(ds, lambda p, a: [stop]), max_items=n, batch_size=5)
    assert all(r['acc'] == 0.0 for r in silent.values())


def test_evaluate_with_the_real_model_matches_one_item_at_a_time(mixture):
    """Batched evaluation (padding, answer masking, batches of equal prompt length) gives the real
    model's per-item answer-token loss and greedy exact match, computed here one item at a time."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    ds = mixture
    model = GPT(GPTConfig(block_size=64, vocab_size=ds.vocab_size, n_layer=1, n_head=2, n_embd=32))
    res = ds.evaluate(model, max_items=4)
    stop = ds.stop_token
    for t in data.MIXTURE:
        items = ds.data[t]['test'][:4]
        nll = n_tok = right = 0
        max_new = max(len(a) for _, a in items)
        for p, a in items:
            with torch.no_grad():
                logits, _ = model(torch.tensor([p + a[:-1]]))
                # the position of each answer token's prediction
                answer_logits = logits[0, len(p) - 1 :]
                nll += torch.nn.functional.cross_entropy(
                    answer_logits, torch.tensor(a), reduction='sum'
                ).item()
                out = model.generate(torch.tensor([p]), max_new, temperature=0.0, stop_token=stop)[
                    0, len(p) :
                ].tolist()
            n_tok += len(a)
            right += stop in out and out[: out.index(stop) + 1] == a
        assert res[t]['loss'] == pytest.approx(nll / n_tok, rel=1e-4), t
        assert res[t]['acc'] == right / len(items) and res[t]['n'] == 4, t
    # an untrained model is near uniform
    assert abs(res['avg']['loss'] - math.log(ds.vocab_size)) < 1.0


# -----------------------------------------------------------------------------------------------
# bad data files: one line naming the file and what to do; files the project wrote are rebuilt

# a tiny world, built in a blink
SMALL = dict(n_people=30, bio_repeats=1, n_train=40, n_eval=10, n_skill=60)


def one_line(excinfo, *words):
    """The error is one a script's `except (ValueError, FileNotFoundError)` prints as one line, with words in it."""
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, (ValueError, FileNotFoundError)) and '\n' not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.mark.parametrize(
    'item, words',
    [
        (
            {'instruction': 5, 'input': '', 'output': 'x'},
            ['item 2 has "instruction": 5, not a string'],
        ),
        (
            {'instruction': 'a', 'input': ['b'], 'output': 'x'},
            ['item 2 has "input": ["b"], not a string'],
        ),
        (
            {'instruction': 'a', 'input': '', 'output': None},
            ['item 2 has "output": null, not a string'],
        ),
        ({'instruction': 'a'}, ['item 2 has no "output"']),
        ('just text', ['item 2 is "just text", not an object']),
    ],
)
def test_alpaca_item_of_the_wrong_type(tmp_path, item, words):
    rows = [
        {'instruction': 'a', 'output': 'b'},
        {'instruction': 'c', 'input': 'd', 'output': 'e'},
        item,
    ]
    path = tmp_path / 'alpaca.json'
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError) as e:
        data.get_dataset('alpaca', 32, data_dir=str(tmp_path), path=str(path))
    one_line(e, str(path), *words, 'Alpaca format', 'fix or remove that item')


@pytest.mark.parametrize(
    'text, words',
    [
        ('mr,ref\na,b\nc\ne,f\n', ['line 3: the row has no ref', 'give every row an mr and a ref']),
        ('mr,ref\na,b\nc,"d\ne,f\n', ['line 3: unexpected end of data', 'close each quoted field']),
        ('mr,ref\na,b\nc,"d"x\n', ['line 3:', 'close each quoted field']),
        (
            'mr\na\n',
            ["expected a CSV with columns mr,ref (E2E NLG), got ['mr']", 'header line mr,ref'],
        ),
    ],
)
def test_e2e_row_without_ref_or_with_a_bad_quote(tmp_path, text, words):
    path = tmp_path / 'e2e.csv'
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        data.get_dataset('e2e', 32, data_dir=str(tmp_path), path=str(path))
    one_line(e, str(path), *words)


@pytest.mark.parametrize(
    'name, blob',
    [
        ('text', b'plain\ntext \xe9t\xe9\n'),
        ('alpaca', b'[{"instruction": "\xe9"}]'),
        ('e2e', b'mr,ref\na,b\n\xe9,c\n'),
    ],
)
def test_a_file_that_is_not_utf8(tmp_path, name, blob):
    path = tmp_path / 'file'
    path.write_bytes(blob)
    with pytest.raises(ValueError) as e:
        data.get_dataset(name, 32, data_dir=str(tmp_path), path=str(path))
    where = blob.index(b'\xe9')
    line = blob[:where].count(b'\n') + 1
    one_line(
        e, f'{path} is not UTF-8 text (byte {where}, line {line}: ', r"b'\xe9'", 'save it as UTF-8'
    )


def test_missing_files_say_how_to_give_a_path(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError('no network')

    monkeypatch.setattr('urllib.request.urlopen', offline)
    hint = 'pass --data_path=FILE to train.py (path=FILE to data.get_dataset)'
    with pytest.raises(FileNotFoundError) as e:
        data.get_dataset('text', 32, data_dir=str(tmp_path), path=str(tmp_path / 'notes.txt'))
    one_line(e, f'{tmp_path / "notes.txt"} not found: put the file there, or {hint}')
    with pytest.raises(ValueError) as e:
        data.get_dataset('text', 32, data_dir=str(tmp_path))
    one_line(e, "dataset 'text' needs a plain-text file", hint)
    with pytest.raises(FileNotFoundError) as e:
        data.get_dataset('alpaca', 32, data_dir=str(tmp_path))
    one_line(
        e, 'alpaca_data.json not found and https://', 'could not be downloaded (OSError)', hint
    )
    with pytest.raises(FileNotFoundError) as e:
        data.get_dataset('e2e', 32, data_dir=str(tmp_path))
    one_line(e, f'{tmp_path / "e2e"} not found: put the E2E CSVs', hint)
    assert not os.listdir(tmp_path)  # nothing written on the way


@pytest.mark.parametrize(
    'damage', ['train.bin cut to an odd size', 'val.bin cut by one token', 'meta.json cut']
)
def test_damaged_token_cache_is_rebuilt(tmp_path, capsys, damage):
    folder = data.build_world(str(tmp_path), **SMALL)
    stream = os.path.join(folder, 'world')
    files = {
        n: open(os.path.join(stream, n), 'rb').read() for n in ('train.bin', 'val.bin', 'meta.json')
    }
    name, cut = {
        'train.bin cut to an odd size': ('train.bin', 3),
        'val.bin cut by one token': ('val.bin', 2),
        'meta.json cut': ('meta.json', 10),
    }[damage]
    with open(os.path.join(stream, name), 'wb') as f:
        f.write(files[name][:-cut])
    capsys.readouterr()
    ds = data.get_dataset('world', 16, data_dir=str(tmp_path), **SMALL)
    err = capsys.readouterr().err
    assert (
        err.count('\n') == 1
        and os.path.join(stream, name if name != 'meta.json' else 'meta.json') in err
    )
    assert f'rebuilding the token cache {stream}' in err
    assert {n: open(os.path.join(stream, n), 'rb').read() for n in files} == files
    assert ds.get_batch('train', 2)[0].shape == (2, 16)


def test_damaged_stream_of_a_user_folder_says_delete_it(tmp_path):
    folder = str(tmp_path / 's')
    meta = data.write_stream(folder, 'the cat sat.\n' * 200, data.get_tokenizer('world'), 'world')
    with open(os.path.join(folder, 'train.bin'), 'r+b') as f:
        f.truncate(2 * meta['tokens']['train'] - 1)
    with pytest.raises(ValueError) as e:
        data.StreamDataset(folder, 16, data.get_tokenizer('world'), 'world')
    one_line(
        e,
        f"{folder}/train.bin has {2 * meta['tokens']['train'] - 1} bytes where meta.json records "
        f"{2 * meta['tokens']['train']}",
        f'delete {folder} and prepare it again',
    )


def test_damaged_text_cache_and_tasks_file_are_rebuilt(tmp_path, capsys):
    path = tmp_path / 'notes.txt'
    path.write_text('one line of notes\r\nand another\n' * 50)
    ds = data.get_dataset(
        'text', 8, tokenizer='world-bytes', data_dir=str(tmp_path), path=str(path)
    )
    # \r\n read as \n, as open() does
    assert sum(ds.meta['tokens'].values()) == len(path.read_bytes()) - 50
    with open(os.path.join(ds.folder, 'val.bin'), 'r+b') as f:
        f.truncate(5)
    data.get_dataset('text', 8, tokenizer='world-bytes', data_dir=str(tmp_path), path=str(path))
    assert (
        'val.bin has 5 bytes' in capsys.readouterr().err
        and os.path.getsize(os.path.join(ds.folder, 'val.bin')) > 5
    )
    folder = data.build_world(str(tmp_path), **SMALL)
    good = open(os.path.join(folder, 'tasks.json'), 'rb').read()
    with open(os.path.join(folder, 'tasks.json'), 'wb') as f:
        f.write(good[:100])
    capsys.readouterr()
    ds = data.get_dataset('mixture', 32, data_dir=str(tmp_path), **SMALL)
    err = capsys.readouterr().err
    # (then block_size=32 crops some items: lines that say so, test_e2e.py checks them)
    assert (
        err.splitlines()[0]
        == f"{os.path.join(folder, 'tasks.json')} is damaged: writing {folder} again"
    )
    assert all(line.startswith('warning: ') for line in err.splitlines()[1:])
    assert (
        open(os.path.join(folder, 'tasks.json'), 'rb').read() == good and ds.tasks == data.MIXTURE
    )


def test_a_bad_data_file_reaches_the_user_as_one_line(tmp_path):
    """Through train.py, as a user meets it: exit status 1, one line naming the file, no traceback."""
    import subprocess
    import sys

    path = tmp_path / 'alpaca.json'
    path.write_text(json.dumps([{'instruction': 'a', 'input': '', 'output': None}]))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(repo, 'train.py'),
            '--dataset=alpaca',
            f'--data_path={path}',
            f'--out_dir={tmp_path / "out"}',
            f'--data_dir={tmp_path}',
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=dict(os.environ, OMP_NUM_THREADS='1'),
    )
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f'error: {path}: item 0 has "output": null, not a string '
        f'(Alpaca format: a JSON list of {{"instruction", "input", "output"}} '
        f'strings): fix or remove that item'
    ]


def test_cli_lists_every_dataset_and_task_and_answers_help(world_dir, monkeypatch, capsys):
    # python data.py builds ./data/world
    monkeypatch.chdir(os.path.dirname(os.path.dirname(world_dir)))
    data.main(['--help'])
    assert capsys.readouterr().out == data.USAGE + '\n'
    with pytest.raises(SystemExit) as e:
        data.main(['--data_dir=x'])
    err = capsys.readouterr().err
    assert (
        e.value.code == 2
        and err.count('\n') == 1
        and "takes no arguments, got '--data_dir=x'" in err
    )
    data.main([])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith('  ')]
    assert listed == list(data.DATASETS) and len(listed) == 17
    assert (
        "tasks (20: the mixture's 12, the spare color_of (*), the 3 skill and 4 manual tasks" in out
    )
    table = out.split('  example\n')[
        1
    ].splitlines()  # the task table (some datasets are named like tasks)
    rows = [
        line.split()[0] for line in table if line.split() and line.split()[0] in data.TASK_FAMILY
    ]
    assert sorted(rows) == sorted(data.TASK_FAMILY) and len(rows) == 20
