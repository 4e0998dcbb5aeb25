"""E2E NLG as the papers use it: the shipped files, splits without a shared MR, scoring per unique MR
against all its references, delexicalisation, no silent cropping, the trainset's one-line message,
and the training options the GPU recipes need (linear decay, epochs)."""

import math
import os
from types import SimpleNamespace

import pytest
import torch

import data
import train
from model import GPT, GPTConfig
from sources import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E2E_DIR = os.path.join(ROOT, 'data', 'e2e')


@pytest.fixture(scope='module')
def e2e():
    return data.get_dataset(
        'e2e', 384, data_dir=os.path.join(ROOT, 'data'), e2e_train='devset', e2e_delex='name,near'
    )


def test_shipped_files_and_splits(e2e):
    rows = {s: len(v) for s, v in e2e.data['e2e'].items()}
    mrs = {s: len(g) for s, g in e2e.groups.items()}
    assert rows['train'] + rows['val'] == 4672 and mrs['train'] + mrs['val'] == 547
    assert mrs['val'] == 54  # 10% of the devset's MRs validate
    assert rows['test'] == 4693 and mrs['test'] == 630  # the official test set
    assert sum(len(refs) for _, refs in e2e.groups['test']) == 4693
    train_q = {q for q, _ in e2e.groups['train']}
    assert not train_q & {q for q, _ in e2e.groups['val']}  # no MR in two splits
    # the references kept for scoring are the original (lexicalised) texts
    q, refs = e2e.groups['test'][0]
    assert q.startswith('describe: name[') and 'X-name' not in ''.join(refs)
    assert e2e.cropped == {}  # block_size 384 (config/e2e_small.py) holds every item


def test_delexicalisation_round_trip():
    mr = 'name[The Eagle], eatType[pub], near[Burger King]'
    ref = 'the eagle is a pub near Burger King. The Eagle is cheap.'
    dmr, dref = files.delexicalise(mr, ref, 'name,near')
    assert dmr == 'name[X-name], eatType[pub], near[X-near]'
    assert dref == 'X-name is a pub near X-near. X-name is cheap.'
    assert files.relexicalise(dref, mr, 'name,near') == (
        'The Eagle is a pub near Burger King. The Eagle is cheap.'
    )
    # a placeholder the MR has no value for stays visible (a hallucinated near[])
    assert (
        files.relexicalise('X-name, near X-near', 'name[Zizzi]', 'name,near')
        == 'Zizzi, near X-near'
    )
    assert files.parse_mr('describe: name[Zizzi], food[Fast food]') == {
        'name': 'Zizzi',
        'food': 'Fast food',
    }
    assert data.e2e_prompt('name[Zizzi], food[Thai]', delex='name,near') == (
        'Q: describe: name[X-name], food[Thai]\nA:'
    )
    assert data.e2e_prompt('name[Zizzi], food[Thai]') == 'Q: describe: name[Zizzi], food[Thai]\nA:'
    assert (
        data.e2e_answer(' X-name serves Thai. ', 'name[Zizzi]', delex='name,near')
        == 'Zizzi serves Thai.'
    )
    assert data.e2e_answer(' X-name serves Thai. ', 'name[Zizzi]') == 'X-name serves Thai.'


def test_eattype_and_food_delexicalised_with_their_articles():
    mr = 'name[The Eagle], eatType[pub], food[English], near[Burger King]'
    ref = 'the eagle is an English pub near Burger King, not a public house. The Eagle is cheap.'
    slots = 'name,near,eatType,food'
    dmr, dref = files.delexicalise(mr, ref, slots)
    assert dmr == 'name[X-name], eatType[X-eatType], food[X-food], near[X-near]'
    # whole words: the pub of 'public' stays
    assert dref == 'X-name is an X-food X-eatType near X-near, not a public house. X-name is cheap.'
    assert files.relexicalise(dref, mr, slots) == (
        'The Eagle is an English pub near Burger King, not a public house. The Eagle is cheap.'
    )
    # the article follows the value put back, and 'X-food food' says Fast food once
    assert files.relexicalise(
        'An X-food X-eatType, a X-food place serving X-food food', mr, slots
    ) == ('An English pub, an English place serving English food')
    mr2 = 'name[Zizzi], eatType[restaurant], food[Fast food]'
    assert files.relexicalise('X-name is an X-food X-eatType serving X-food food.', mr2, slots) == (
        'Zizzi is a Fast food restaurant serving Fast food.'
    )
    # only the slots asked for: food alone leaves the name and the eatType
    assert files.delexicalise(mr, ref, 'food') == (
        'name[The Eagle], eatType[pub], food[X-food], near[Burger King]',
        'the eagle is an X-food pub near Burger King, not a public house. The Eagle is cheap.',
    )
    assert data.e2e_prompt('name[Zizzi], area[riverside], food[Thai]', delex=slots) == (
        'Q: describe: name[X-name], area[riverside], food[X-food]\nA:'
    )
    # a placeholder from a slot the run did not delexicalise is left, to be seen
    assert files.relexicalise('X-name serves X-food.', mr2, 'name,near') == 'Zizzi serves X-food.'


def test_delex_option_slots_and_old_bools():
    assert files.e2e_delex_slots('') == ()
    assert files.e2e_delex_slots('food, name') == ('name', 'food')  # E2E_PLACEHOLDERS order
    assert files.e2e_delex_slots('name,near,eatType,food') == tuple(files.E2E_PLACEHOLDERS)
    # checkpoints from before the option named its slots hold a bool
    assert files.e2e_delex_slots(True) == ('name', 'near')
    assert files.e2e_delex_slots(False) == ()
    with pytest.raises(ValueError) as e:
        files.e2e_delex_slots('name,price')
    msg = str(e.value)
    assert '\n' not in msg and "unknown slot 'price'" in msg
    assert 'name, near, eatType, food' in msg
    with pytest.raises(ValueError, match="e2e_delex='name,foods': unknown slot 'foods'"):
        train.parse_args(['config/e2e_small.py', '--e2e_delex=name,foods'])
    with pytest.raises(ValueError, match="unknown slot 'Food'"):
        data.get_dataset(
            'e2e', 384, data_dir=os.path.join(ROOT, 'data'), e2e_train='devset', e2e_delex='Food'
        )
    ext = train.parse_args(['config/e2e_small.py', '--e2e_delex=name,near,eatType,food'])
    assert ext['e2e_delex'] == 'name,near,eatType,food'


def test_slot_errors_by_hand():
    mr = 'name[X-name], food[Fast food], priceRange[cheap], customer rating[5 out of 5]'
    mr += ', area[riverside], familyFriendly[no]'
    good = 'X-name serves cheap fast food by the river. Rated 5 out of 5, not family-friendly.'
    assert files.e2e_slot_errors(good, mr) == 0
    # no food, no price, no rating; a near[] the MR lacks; kids welcome is not 'no'
    bad = 'X-name is by the river near X-near. Kids are welcome.'
    assert files.e2e_slot_errors(bad, mr) == 3 + 1 + 1
    yes = mr.replace('familyFriendly[no]', 'familyFriendly[yes]')
    assert files.e2e_slot_errors(good, yes) == 1  # not family-friendly is not 'yes'
    assert files.e2e_slot_errors(good.replace('not family', 'kid'), yes) == 0
    adults = 'X-name is an adults only place.'
    assert files.e2e_slot_errors(adults, 'name[X-name], near[X-near], familyFriendly[no]') == 1


class Beams(torch.nn.Module):
    """A stand-in model whose beam search returns fixed n-best answers for every prompt."""

    def __init__(self, answers, enc):
        super().__init__()
        self.answers, self.enc = answers, enc
        self.config = SimpleNamespace(block_size=512)

    def generate(self, idx, max_new_tokens, stop_token=None, num_beams=1, n_best=1, **rest):
        assert num_beams == len(self.answers)  # n_best=1: the top beam alone
        rows = [self.enc.encode_ordinary(a) + [stop_token] for a in self.answers[:n_best]]
        new = torch.full((len(rows), max_new_tokens), stop_token)
        for r, ids in enumerate(rows):
            new[r, : len(ids)] = torch.tensor(ids)
        return torch.cat((idx.repeat_interleave(n_best, 0), new.repeat(idx.size(0), 1)), dim=1)


def test_delexicalised_beams_are_reranked_by_slot_errors(e2e):
    """Of the n best, the first with the fewest slot errors: not the top beam, which invents a
    near[], nor the third, as good as the second but after it."""
    answers = [
        ' X-name is a coffee shop near X-near.',
        ' X-name is a coffee shop.',
        ' X-name, a pub.',
    ]
    model = Beams(answers, e2e.tokenizer)
    mrs = ['name[Aromi], eatType[coffee shop]', 'name[Aromi], eatType[coffee shop], near[Zizzi]']
    got = e2e.predict(model, mrs, num_beams=3, length_penalty=1.0)
    assert got == ['Aromi is a coffee shop.', 'Aromi is a coffee shop near Zizzi.']
    e2e.delex = ()  # without delexicalisation: the top beam, as the papers decode
    try:
        assert e2e.predict(model, mrs[:1], num_beams=3) == ['X-name is a coffee shop near X-near.']
    finally:
        e2e.delex = ('name', 'near')


def test_delexicalised_training_items(e2e):
    enc = e2e.tokenizer
    texts = [enc.decode(p + a) for p, a in e2e.data['e2e']['train'][:50]]
    assert all('name[X-name]' in t for t in texts)
    # ... and no venue name of those MRs is left in their texts
    for (q, _refs), t in zip(e2e.groups['train'][:5], texts[:5]):
        assert files.parse_mr(q)['name'] not in t


class Parrot(torch.nn.Module):
    """A stand-in model that answers every prompt with fixed tokens (then the stop token), and gives
    uniform logits for the loss: evaluate's grouping and scoring is tested without training."""

    def __init__(self, answer_ids, vocab):
        super().__init__()
        self.answer, self.vocab = answer_ids, vocab
        self.config = SimpleNamespace(block_size=512)

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab), None

    def generate(self, idx, max_new_tokens, stop_token=None, num_beams=1, **padding_and_sampling):
        assert num_beams == 1  # (the test decodes greedily)
        new = torch.tensor(self.answer + [stop_token] * max_new_tokens)[:max_new_tokens]
        return torch.cat((idx, new.expand(idx.size(0), -1)), dim=1)


def test_evaluate_scores_each_mr_once_against_all_its_references(e2e):
    import metrics

    answer = ' X-name is a coffee shop near X-near.'
    model = Parrot(e2e.tokenizer.encode_ordinary(answer), e2e.vocab_size)
    out = e2e.evaluate(model, split='test', max_items=40, num_beams=1)
    r = out['e2e']
    groups = e2e.groups['test'][:40]
    assert r['n'] == 40 and r['refs'] == sum(len(g) for _, g in groups)
    # names put back from each MR; scored per MR against all of its references
    want = [answer.strip().replace('X-name', files.parse_mr(q)['name']) for q, _ in groups]
    want = [files.relexicalise(w, q, 'name,near') for w, (q, _) in zip(want, groups)]
    assert r['predictions'] == want
    assert r['BLEU'] == pytest.approx(metrics.bleu(want, [g for _, g in groups]), abs=1e-12)
    assert r['loss'] == pytest.approx(math.log(e2e.vocab_size), rel=1e-5)  # uniform logits
    table = data.format_results(out)
    assert 'BLEU' in table and f"{r['BLEU']:.4f}" in table


def test_cropping_is_reported(capsys):
    ds = data.get_dataset('e2e', 96, data_dir=os.path.join(ROOT, 'data'), e2e_train='devset')
    err = capsys.readouterr().err
    n = sum(len(p) + len(a) - 1 > 96 for p, a in ds.data['e2e']['train'])
    assert n > 0 and ds.cropped[('e2e', 'train')] == n
    assert f'warning: {n} of {len(ds.data["e2e"]["train"])} e2e train items are longer than ' in err
    assert 'block_size=96: their prompts lose up to' in err


def test_trainset_absent_offline_is_one_line(tmp_path, monkeypatch):
    for f in ('devset.csv', 'testset_w_refs.csv'):
        (tmp_path / f).write_bytes(
            open(os.path.join(E2E_DIR, f), 'rb').read()[:2000].rsplit(b'\n', 1)[0]
        )

    def offline(*a, **k):
        raise OSError('no network in tests')

    monkeypatch.setattr('urllib.request.urlopen', offline)
    with pytest.raises(FileNotFoundError) as e:
        data.get_dataset('e2e', 384, path=str(tmp_path))
    msg = str(e.value)
    assert '\n' not in msg and 'trainset.csv not found' in msg and '--e2e_train=devset' in msg
    assert files.URLS['e2e'] in msg
    with pytest.raises(ValueError, match="e2e_train='dev': use 'trainset'"):
        data.get_dataset('e2e', 384, path=str(tmp_path), e2e_train='dev')


def test_linear_decay_and_epochs():
    c = SimpleNamespace(
        decay_lr=True, warmup_iters=500, learning_rate=2e-4, min_lr=0.0, max_iters=1500,
        lr_schedule='linear',
    )  # fmt: skip
    assert train.lr_at(0, c) == pytest.approx(2e-4 / 501)
    assert train.lr_at(500, c) == pytest.approx(2e-4)
    assert train.lr_at(1000, c) == pytest.approx(1e-4)  # halfway down, a straight line
    assert train.lr_at(1500, c) == pytest.approx(0.0, abs=1e-15)
    c.lr_schedule = 'cosine'
    assert train.lr_at(1000, c) == pytest.approx(1e-4)  # cosine also passes the middle at half
    assert train.lr_at(750, c) == pytest.approx(1e-4 * (1 + math.cos(math.pi / 4)))
    # the LoRA recipe: 5 epochs of the 42,061 trainset rows at batch 8
    ds = SimpleNamespace(train_tasks=['e2e'], data={'e2e': {'train': [None] * 42061}})
    cfg = SimpleNamespace(epochs=5.0, batch_size=8, gradient_accumulation_steps=1, dataset='e2e')
    assert train.iters_for_epochs(cfg, ds) == math.ceil(5 * 42061 / 8) == 26289
    with pytest.raises(ValueError, match="lr_schedule='step': choose 'cosine' or 'linear'"):
        train.parse_args(['--lr_schedule=step'])


def test_e2e_configs_parse():
    small = train.parse_args(['config/e2e_small.py'])
    assert small['e2e_train'] == 'devset' and small['block_size'] == 384
    assert small['e2e_delex'] == 'name,near,eatType,food'  # issue 19's value-shift split chose it
    lora = train.parse_args(['config/gpt2_e2e_lora.py'])
    assert (lora['lr_schedule'], lora['epochs'], lora['grad_clip'], lora['e2e_delex']) == (
        'linear',
        5.0,
        0.0,
        '',
    )
    assert (lora['beta2'], lora['warmup_iters'], lora['min_lr']) == (0.999, 500, 0.0)


def test_train_py_final_eval_prints_e2e_scores(tmp_path, capsys):
    d = tmp_path / 'e2e'
    d.mkdir()
    for f in ('devset.csv', 'testset_w_refs.csv'):
        lines = open(os.path.join(E2E_DIR, f), encoding='utf-8').read().splitlines()[:121]
        (d / f).write_text('\n'.join(lines) + '\n', encoding='utf-8')
    train.main(
        [
            'config/e2e_small.py', f'--data_dir={tmp_path}', f'--out_dir={tmp_path / "out"}',
            '--n_layer=1', '--n_head=2', '--n_embd=16', '--max_iters=2', '--batch_size=4',
            '--eval_iters=1', '--eval_split=test', '--eval_max_items=3', '--dtype=float32',
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert 'BLEU' in out and 'NIST' in out and 'ROUGE_L' in out and 'CIDEr' in out
    assert os.path.exists(tmp_path / 'out' / 'eval.json')


def test_a_run_with_the_old_bool_e2e_delex_resumes(tmp_path, capsys):
    """A checkpoint from before e2e_delex named its slots (True) resumes under 'name,near', and
    refuses other slots in one line."""
    from formats.checkpoint import read_checkpoint, write_checkpoint

    d = tmp_path / 'e2e'
    d.mkdir()
    for f in ('devset.csv', 'testset_w_refs.csv'):
        lines = open(os.path.join(E2E_DIR, f), encoding='utf-8').read().splitlines()[:121]
        (d / f).write_text('\n'.join(lines) + '\n', encoding='utf-8')
    out = tmp_path / 'out'
    tiny = ['config/e2e_small.py', f'--data_dir={tmp_path}', f'--out_dir={out}', '--n_layer=1']
    tiny += ['--n_head=2', '--n_embd=16', '--batch_size=4', '--eval_iters=1', '--dtype=float32']
    tiny += ['--final_eval=False', '--e2e_delex=name,near']
    train.main([*tiny, '--max_iters=2'])
    ck = read_checkpoint(str(out / 'ckpt.pt'))
    ck['config']['e2e_delex'] = True
    write_checkpoint(ck, str(out / 'ckpt.pt'))
    with pytest.raises(
        ValueError, match="trained with e2e_delex='name,near'; a resumed run cannot"
    ):
        train.main(
            [*tiny[:-1], '--e2e_delex=name,near,food', '--init_from=resume', '--max_iters=3']
        )
    train.main([*tiny, '--init_from=resume', '--max_iters=3'])
    assert 'resuming' in capsys.readouterr().out
    assert read_checkpoint(str(out / 'ckpt.pt'))['iter_num'] == 3


def test_tiny_gpt_decodes_through_the_dataset(e2e):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(block_size=384, vocab_size=e2e.vocab_size, n_layer=1, n_head=2, n_embd=16)
    )
    preds = e2e.predict(
        model.eval(), [q for q, _ in e2e.groups['test'][:3]], num_beams=1, max_new_tokens=4
    )
    assert len(preds) == 3 and all(isinstance(p, str) for p in preds)
