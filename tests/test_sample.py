"""sample.py: scoring two files, decoding a dataset split from a full or an adapter checkpoint (files
in the e2e-metrics formats, the JSON scores last), free prompts in the dataset's template, errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

import adapters
import data
import metrics
import sample
import train
from formats.checkpoint import load_model, read_checkpoint, write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--n_layer=1', '--n_head=2', '--n_embd=16', '--batch_size=4', '--eval_iters=1']
TINY += ['--dtype=float32', '--final_eval=False', '--device=cpu']
SMALL_DELEX = train.parse_args(['config/e2e_small.py'])['e2e_delex']  # what the runs train on


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A tiny E2E data folder (the first MRs of the shipped files), a full-model run on it (delexicalised)
    and a LoRA run on top of that model."""
    root = tmp_path_factory.mktemp('s')
    (root / 'e2e').mkdir()
    for f in ('devset.csv', 'testset_w_refs.csv'):
        lines = open(os.path.join(ROOT, 'data', 'e2e', f), encoding='utf-8').read().splitlines()
        (root / 'e2e' / f).write_text('\n'.join(lines[:121]) + '\n', encoding='utf-8')
    full, lora = root / 'full', root / 'lora'
    train.main(
        ['config/e2e_small.py', f'--data_dir={root}', f'--out_dir={full}', '--max_iters=3'] + TINY
    )
    train.main(
        ['config/e2e_small.py', f'--data_dir={root}', f'--out_dir={lora}', '--max_iters=2']
        + TINY
        + [f'--init_from={full / "ckpt.pt"}', '--adapter=lora', '--lora_r=2']
    )
    return root


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_score_two_files(tmp_path, capsys):
    refs, preds = tmp_path / 'refs.txt', tmp_path / 'preds.txt'
    metrics.write_references(
        refs, [['The Eagle is a pub.', 'A pub: The Eagle.'], ['Zizzi is cheap.']]
    )
    metrics.write_predictions(preds, ['The Eagle is a pub.', 'Zizzi is a cheap place.'])
    sample.main(['--score', str(refs), str(preds)])
    got = last_json(capsys)
    assert list(got) == ['BLEU', 'NIST', 'ROUGE_L', 'CIDEr']
    assert got == pytest.approx(metrics.score_files(refs, preds))
    assert 0 < got['BLEU'] < 1


def test_decode_a_split_writes_the_official_formats(runs, capsys):
    ck = runs / 'full' / 'ckpt.pt'
    sample.main([f'--ckpt={ck}', '--dataset=e2e', '--split=test', '--max_items=5', '--num_beams=1'])
    scores = last_json(capsys)
    preds = metrics.read_predictions(runs / 'full' / 'e2e_test_predictions.txt')
    refs = metrics.read_references(runs / 'full' / 'e2e_test_references.txt')
    ds = data.get_dataset('e2e', 384, data_dir=str(runs), e2e_train='devset', e2e_delex=SMALL_DELEX)
    assert len(preds) == 5 and refs == [r for _, r in ds.groups['test'][:5]]
    assert scores == pytest.approx(metrics.score_all(preds, refs))
    # the same predictions as the dataset's own decoding of the checkpoint's model
    model, _ = load_model(str(ck))
    assert preds == [
        p.replace('\n', ' ').strip()
        for p in ds.predict(model.eval(), [q for q, _ in ds.groups['test'][:5]], num_beams=1)
    ]


def test_adapter_checkpoint_is_merged_into_its_base(runs, capsys):
    # the trained LoRA's B is still near 0 after 2 steps: give it weight, or merged == base
    ck = read_checkpoint(str(runs / 'lora' / 'ckpt.pt'))
    g = torch.Generator().manual_seed(0)
    for k, v in ck['adapter']['state'].items():
        if k.endswith('lora_B'):
            ck['adapter']['state'][k] = torch.randn(v.shape, generator=g)
    os.makedirs(runs / 'lora_big', exist_ok=True)
    path = str(runs / 'lora_big' / 'ckpt.pt')
    write_checkpoint(ck, path)
    sample.main([f'--ckpt={path}', '--dataset=e2e', '--max_items=4', '--num_beams=1'])
    preds = metrics.read_predictions(runs / 'lora_big' / 'e2e_test_predictions.txt')
    base, _ = load_model(str(runs / 'full' / 'ckpt.pt'))
    ds = data.get_dataset('e2e', 384, data_dir=str(runs), e2e_train='devset', e2e_delex=SMALL_DELEX)
    qs = [q for q, _ in ds.groups['test'][:4]]
    plain = ds.predict(base.eval(), qs, num_beams=1)
    adapters.load_adapter_checkpoint(path, base)
    with adapters.merged(base.eval()):
        want = ds.predict(base, qs, num_beams=1)
    assert preds == [p.replace('\n', ' ').strip() for p in want] and want != plain


def test_free_prompts_use_the_dataset_template(runs, capsys, tmp_path):
    ck = runs / 'full' / 'ckpt.pt'
    (tmp_path / 'p.txt').write_text('name[Zizzi], food[Thai]\n\ndescribe: name[Aromi]\n')
    sample.main([f'--ckpt={ck}', f'--start=FILE:{tmp_path / "p.txt"}', '--num_samples=2'])
    out = capsys.readouterr().out
    assert out.count('---------------') == 4  # 2 prompts x 2 samples
    assert 'Q: describe' not in out  # answers only, not the template
    model, _ = load_model(str(ck))
    torch.manual_seed(0)
    sample.main([f'--ckpt={ck}', '--start=name[Zizzi]', '--temperature=0', '--max_new_tokens=6'])
    greedy = capsys.readouterr().out.split('\n---------------')[0]
    enc = data.get_tokenizer('world')
    ids = enc.encode_ordinary(data.e2e_prompt('name[Zizzi]', delex=SMALL_DELEX))
    y = model.eval().generate(torch.tensor([ids]), 6, temperature=0.0, stop_token=enc.eot_token)
    assert greedy == data.e2e_answer(
        enc.decode(data.cut_at(y[0, len(ids) :].tolist(), enc.eot_token)),
        'name[Zizzi]',
        SMALL_DELEX,
    )


def test_a_checkpoint_with_the_old_bool_e2e_delex_decodes_as_name_near(runs, capsys):
    """Checkpoints written before e2e_delex named its slots hold True (name, near) or False."""
    ck = read_checkpoint(str(runs / 'full' / 'ckpt.pt'))
    assert ck['config']['e2e_delex'] == SMALL_DELEX
    got = {}
    for old in (True, False):
        ck['config']['e2e_delex'] = old
        os.makedirs(runs / f'old_{old}', exist_ok=True)
        write_checkpoint(ck, str(runs / f'old_{old}' / 'ckpt.pt'))
        sample.main(
            [f'--ckpt={runs / f"old_{old}" / "ckpt.pt"}', '--dataset=e2e', '--max_items=3']
            + ['--num_beams=1']
        )
        got[old] = metrics.read_predictions(runs / f'old_{old}' / 'e2e_test_predictions.txt')
    model, _ = load_model(str(runs / 'full' / 'ckpt.pt'))
    for old, delex in ((True, 'name,near'), (False, '')):
        ds = data.get_dataset('e2e', 384, data_dir=str(runs), e2e_train='devset', e2e_delex=delex)
        want = ds.predict(model.eval(), [q for q, _ in ds.groups['test'][:3]], num_beams=1)
        assert got[old] == [p.replace('\n', ' ').strip() for p in want]
    assert got[True] != got[False]  # the names put back, or the placeholders left


def test_val_split_of_a_data_path_folder_with_eattype_and_food_delexicalised(tmp_path, capsys):
    """A run on a folder in the official layout (--data_path, e2e_train='trainset': its trainset.csv
    trains, its devset.csv validates) is decoded on that folder's val split, as it was trained."""
    shipped = os.path.join(ROOT, 'data', 'e2e')
    lines = open(os.path.join(shipped, 'devset.csv'), encoding='utf-8').read().splitlines()
    (tmp_path / 'trainset.csv').write_text('\n'.join(lines[:61]) + '\n', encoding='utf-8')
    (tmp_path / 'devset.csv').write_text('\n'.join(lines[:1] + lines[61:141]) + '\n', 'utf-8')
    test = open(os.path.join(shipped, 'testset_w_refs.csv'), encoding='utf-8').read()
    (tmp_path / 'testset_w_refs.csv').write_text(test, encoding='utf-8')
    out = tmp_path / 'run'
    train.main(
        [
            'config/e2e_small.py',
            f'--data_path={tmp_path}',
            "--e2e_train=trainset",
            f'--out_dir={out}',
        ]
        + ['--e2e_delex=name,near,eatType,food', '--max_iters=2']
        + TINY
    )
    sample.main([f'--ckpt={out / "ckpt.pt"}', '--dataset=e2e', '--split=val', '--num_beams=2'])
    last_json(capsys)
    refs = metrics.read_references(out / 'e2e_val_references.txt')
    rows = data.read_e2e(str(tmp_path / 'devset.csv'))
    assert sum(len(r) for r in refs) == len(rows) == 80
    assert refs[0] == [a for q, a in rows if q == rows[0][0]]
    assert len(metrics.read_predictions(out / 'e2e_val_predictions.txt')) == len(refs)


@pytest.mark.parametrize(
    'args, words',
    [
        (['--score', 'nope.txt', 'nope2.txt'], 'No such file'),
        (['--start=hi'], 'give a model: --ckpt=PATH'),
        (['--ckpt=nope.pt'], 'no checkpoint at nope.pt'),
        (['--init_from=gpt2', '--ckpt=x.pt'], 'give a model'),
    ],
)
def test_bad_input_is_one_line(args, words):
    r = subprocess.run(
        [sys.executable, 'sample.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1 and r.stderr.startswith('error: ') and words in r.stderr
    assert r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr


def test_every_option_has_help():
    parser_help = subprocess.run(
        [sys.executable, 'sample.py', '--help'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for opt in (
        'ckpt', 'init_from', 'start', 'num_samples', 'max_new_tokens', 'temperature', 'top_k',
        'top_p', 'num_beams', 'length_penalty', 'no_repeat_ngram_size', 'seed', 'device', 'dataset',
        'split', 'score',
    ):  # fmt: skip
        assert f'--{opt}' in parser_help
    assert parser_help.count('--') >= 2 * 16  # each option listed, then described
