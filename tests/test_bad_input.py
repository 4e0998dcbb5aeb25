"""The faults and bad inputs a new user meets in train.py: each one loses nothing, says so in one line,
and (run as a program) exits with status 1 and no traceback."""

import builtins
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    '--n_layer=1',
    '--n_head=2',
    '--n_embd=16',
    '--block_size=32',
    '--batch_size=4',
    '--eval_iters=1',
    '--log_interval=1',
    '--warmup_iters=0',
    '--dtype=float32',
    '--final_eval=False',
]


def tiny_run(out_dir, *args):
    """Two iterations into out_dir, one checkpoint at iteration 2."""
    return train.main(TINY + [f'--out_dir={out_dir}', '--max_iters=2', '--eval_interval=2', *args])


def saved(out_dir):
    return torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=True)


def same_weights(a, b):
    return a['model'].keys() == b['model'].keys() and all(
        torch.equal(a['model'][k], b['model'][k]) for k in a['model']
    )


def run_train_py(*args):
    """train.py as a user runs it: (exit status, stderr lines)."""
    p = subprocess.run(
        [sys.executable, 'train.py', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )
    return p.returncode, p.stderr.strip().splitlines()


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """A finished two-iteration run; tests copy it, never change it."""
    out = tmp_path_factory.mktemp('base') / 'run'
    tiny_run(out)
    return out


@pytest.fixture
def run_dir(base, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(base, out)
    return out


def test_new_run_refuses_to_overwrite_another_runs_checkpoint(run_dir):
    before = saved(run_dir)
    with pytest.raises(ValueError) as e:
        tiny_run(run_dir, '--seed=7')
    msg = str(e.value)
    assert f"{run_dir / 'ckpt.pt'} holds another run's checkpoint" in msg
    assert all(
        way in msg for way in ('another --out_dir', '--init_from=resume', '--overwrite=True')
    )
    after = saved(run_dir)
    assert after['iter_num'] == before['iter_num'] == 2 and same_weights(after, before)
    assert sorted(os.listdir(run_dir)) == ['ckpt.pt']
    # asked for, it is replaced
    tiny_run(run_dir, '--seed=7', '--overwrite=True', '--max_iters=1', '--eval_interval=1')
    assert saved(run_dir)['iter_num'] == 1 and saved(run_dir)['config']['seed'] == 7


def test_overwrite_refusal_is_one_line_and_exit_1(run_dir):
    before = saved(run_dir)
    code, lines = run_train_py(f'--out_dir={run_dir}', '--max_iters=10')
    assert code == 1 and len(lines) == 1, lines
    assert lines[0] == (
        f"error: {run_dir / 'ckpt.pt'} holds another run's checkpoint: pass another --out_dir, "
        "--init_from=resume to continue it, or --overwrite=True to replace it"
    )
    assert same_weights(saved(run_dir), before) and sorted(os.listdir(run_dir)) == ['ckpt.pt']


class Stop(Exception):
    pass


def test_resume_applies_a_given_key_even_when_it_equals_the_default(run_dir, monkeypatch, capsys):
    """--max_iters=300 is the default: it used to be dropped on resume, and the run did 0 iterations."""
    real_save = train.save_checkpoint
    seen = []

    def save_then_stop(path, model, optimizer, scaler, c, iter_num, *rest):
        real_save(path, model, optimizer, scaler, c, iter_num, *rest)
        seen.append((iter_num, c.max_iters))
        raise Stop  # enough: two more iterations were trained towards 300

    monkeypatch.setattr(train, 'save_checkpoint', save_then_stop)
    with pytest.raises(Stop):
        train.main(
            [
                f'--out_dir={run_dir}',
                '--init_from=resume',
                f'--max_iters={train.DEFAULTS["max_iters"]}',
            ]
        )
    out = capsys.readouterr().out
    assert f"resuming {run_dir} from iteration 2 (of max_iters 300)" in out
    assert "applying max_iters=300 (was 2)" in out
    assert seen == [(4, 300)] and saved(run_dir)['iter_num'] == 4


def test_resume_applies_schedule_keys(run_dir, capsys):
    """The run trained at the default learning rate; the resumed one runs at 0.5 and says so."""
    s = train.main(
        [
            f'--out_dir={run_dir}',
            '--init_from=resume',
            '--max_iters=3',
            '--eval_interval=1',
            '--learning_rate=0.5',
            '--decay_lr=False',
            '--weight_decay=0.25',
        ]
    )
    out = capsys.readouterr().out
    assert "resuming" in out and "(of max_iters 3)" in out
    assert (
        "applying max_iters=3 (was 2), eval_interval=1 (was 2), learning_rate=0.5 (was 0.001), "
        "decay_lr=False (was True), weight_decay=0.25 (was 0.1)" in out
    )
    ck = saved(run_dir)
    assert s['iters'] == 3 and ck['iter_num'] == 3
    assert (ck['config']['learning_rate'], ck['config']['weight_decay']) == (0.5, 0.25)
    groups = ck['optimizer']['param_groups']
    assert [g['lr'] for g in groups] == [0.5, 0.5] and [g['weight_decay'] for g in groups] == [
        0.25,
        0.0,
    ]


@pytest.mark.parametrize(
    'key, value',
    [
        ('n_layer', 2),
        ('n_embd', 32),
        ('dataset', 'mixture'),
        ('dtype', 'bfloat16'),
        ('batch_size', 8),
        ('seed', 1),
        ('data_seed', 2),
        ('adapter', 'lora'),
        ('tokenizer', 'gpt2'),
    ],
)
def test_resume_refuses_a_key_that_would_change_what_was_trained(run_dir, key, value):
    before = saved(run_dir)
    old = before['config'][key]
    with pytest.raises(ValueError) as e:
        train.main(
            [f'--out_dir={run_dir}', '--init_from=resume', f'--{key}={value!r}', '--max_iters=4']
        )
    assert str(e.value) == (
        f"{run_dir / 'ckpt.pt'} was trained with {key}={old!r}; a resumed run cannot change it "
        f"to {value!r}: drop --{key}, or start a new run with another --out_dir"
    )
    after = saved(run_dir)
    assert (
        after['iter_num'] == 2
        and same_weights(after, before)
        and sorted(os.listdir(run_dir)) == ['ckpt.pt']
    )


def test_resume_accepts_a_fixed_key_given_with_the_checkpoints_value(run_dir, tmp_path, capsys):
    cfg = tmp_path / 'same.py'  # a config file counts as given, like the command line
    cfg.write_text("n_layer = 1\nbatch_size = 4\nmax_iters = 3\n")
    s = train.main(
        [str(cfg), f'--out_dir={run_dir}', '--init_from=resume', '--n_embd=16', '--eval_interval=1']
    )
    assert (
        s['iters'] == 3
        and "applying max_iters=3 (was 2), eval_interval=1 (was 2)" in capsys.readouterr().out
    )
    cfg.write_text("batch_size = 5\n")
    with pytest.raises(
        ValueError, match=r"was trained with batch_size=4; a resumed run cannot change it to 5"
    ):
        train.main([str(cfg), f'--out_dir={run_dir}', '--init_from=resume'])


@pytest.mark.parametrize(
    'text, line, what',
    [
        ("batch_size = 4\nlearning_rate = 3e-4 +\n", 2, 'invalid syntax'),
        (
            "batch_size = 4\n\nmax_iters = n_iters * 2\n",
            3,
            "NameError: name 'n_iters' is not defined",
        ),
        ("dataset = 'text'\ndata_path = open('no/such/file.txt').read()\n", 2, 'FileNotFoundError'),
    ],
)
def test_config_file_error_names_file_and_line(tmp_path, text, line, what):
    cfg = tmp_path / 'broken.py'
    cfg.write_text(text)
    with pytest.raises(ValueError) as e:
        train.parse_args([str(cfg)])
    assert str(e.value).startswith(f"config file {cfg}, line {line}: ") and what in str(e.value)


def test_config_file_error_is_one_line_and_exit_1(tmp_path):
    cfg = tmp_path / 'broken.py'
    cfg.write_text("max_iters = 10\nbatch_size = = 4\n")
    code, lines = run_train_py(str(cfg), f'--out_dir={tmp_path / "out"}')
    assert code == 1 and len(lines) == 1, lines
    assert lines[0] == (
        f"error: config file {cfg}, line 2: invalid syntax "
        "(config files are plain Python assignments)"
    )
    assert not (tmp_path / 'out').exists()


def test_non_finite_numbers_are_refused(tmp_path):
    with pytest.raises(ValueError) as e:
        train.main(TINY + ['--learning_rate=1e999', f'--out_dir={tmp_path / "out"}'])
    assert (
        str(e.value)
        == "option learning_rate must be a finite number but got inf in the command line"
    )
    cfg = tmp_path / 'nan.py'
    cfg.write_text("min_lr = float('nan')\n")
    with pytest.raises(ValueError) as e:
        train.main(TINY + [str(cfg), f'--out_dir={tmp_path / "out"}'])
    assert str(e.value) == f"option min_lr must be a finite number but got nan in {cfg}"
    assert not (tmp_path / 'out').exists()


def test_nan_before_the_first_checkpoint_says_none_was_written(tmp_path):
    with pytest.raises(RuntimeError) as e:
        tiny_run(
            tmp_path / 'out', '--learning_rate=1e30'
        )  # finite, but the first step blows the weights up
    assert str(e.value) == (
        "loss is nan at step 1; stopped, no checkpoint was written; "
        "a smaller --learning_rate may help"
    )
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()


def test_nan_after_a_checkpoint_names_it_and_its_iteration(run_dir):
    before = saved(run_dir)
    with pytest.raises(RuntimeError) as e:  # resumed with a learning rate that diverges
        train.main(
            [f'--out_dir={run_dir}', '--init_from=resume', '--max_iters=6', '--learning_rate=1e30']
        )
    assert str(e.value) == (
        f"loss is nan at step 3; stopped, last good checkpoint kept at {run_dir / 'ckpt.pt'} "
        "(iteration 2); a smaller --learning_rate may help"
    )
    after = saved(run_dir)
    assert after['iter_num'] == 2 and same_weights(after, before)


def test_nan_in_an_overwriting_run_does_not_claim_the_old_checkpoint(run_dir):
    with pytest.raises(RuntimeError) as e:
        tiny_run(run_dir, '--overwrite=True', '--learning_rate=1e30')
    assert f"no checkpoint was written ({run_dir / 'ckpt.pt'} is still the earlier run's)" in str(
        e.value
    )
    assert 'last good' not in str(e.value) and saved(run_dir)['iter_num'] == 2


def test_disk_full_while_saving_keeps_the_previous_checkpoint(run_dir, monkeypatch):
    before = saved(run_dir)
    path = str(run_dir / 'ckpt.pt')

    def write_half_then_fail(obj, f, *a, **k):
        with open(f, 'wb') as fh:
            fh.write(b'PK\x03\x04' + bytes(1000))
        raise RuntimeError(
            '[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1024'
        )

    monkeypatch.setattr(torch, 'save', write_half_then_fail)
    monkeypatch.setattr(
        shutil, 'disk_usage', lambda p: SimpleNamespace(total=2**40, used=2**40 - 2**20, free=2**20)
    )
    with pytest.raises(RuntimeError) as e:
        train.main(
            [f'--out_dir={run_dir}', '--init_from=resume', '--max_iters=3', '--eval_interval=1']
        )
    monkeypatch.undo()
    assert str(e.value) == (
        f"could not write {path}: disk full (1 MiB free in {run_dir}); the previous {path} is "
        f"untouched and the partial {path}.tmp was removed"
    )
    assert sorted(os.listdir(run_dir)) == ['ckpt.pt']
    after = saved(run_dir)
    assert after['iter_num'] == 2 and same_weights(after, before)


def test_stale_partial_checkpoint_is_removed_at_start(run_dir, capsys):
    tmp = run_dir / 'ckpt.pt.tmp'
    tmp.write_bytes(b'PK\x03\x04 left by a kill -9 during a write')
    before = saved(run_dir)
    train.main(
        [f'--out_dir={run_dir}', '--init_from=resume']
    )  # nothing left to train: no checkpoint is written
    assert (
        f"removed {tmp}, a partial checkpoint left by an interrupted write"
        in capsys.readouterr().out
    )
    assert not tmp.exists() and same_weights(saved(run_dir), before)


def test_text_dataset_from_data_path(tmp_path):
    text = tmp_path / 'notes.txt'
    text.write_text(
        '\n'.join(f'line {i}: the cat sat on the mat {i % 7} times.' for i in range(300))
    )
    s = tiny_run(
        tmp_path / 'out', '--dataset=text', f'--data_path={text}', f'--data_dir={tmp_path / "data"}'
    )
    assert s['iters'] == 2 and s['val_loss'] < 10
    ck = saved(tmp_path / 'out')
    assert (
        ck['config']['data_path'] == str(text)
        and ck['data']['dataset'] == 'text'
        and ck['data']['fingerprint']
    )
    other = tmp_path / 'other.txt'  # data_path may move on resume, but only to the same data
    other.write_text(text.read_text().replace('cat', 'dog'))
    with pytest.raises(
        ValueError,
        match=r"^the text data found now is not the data .*ckpt.pt trained on "
        r"\(fingerprint \w+ vs \w+\): point --data_dir or --data_path at that data$",
    ):
        train.main(
            [
                f'--out_dir={tmp_path / "out"}',
                '--init_from=resume',
                f'--data_path={other}',
                '--max_iters=4',
            ]
        )
    assert saved(tmp_path / 'out')['iter_num'] == 2
    with pytest.raises(
        ValueError,
        match=r"^data_path is read by the text, shakespeare, alpaca, e2e datasets only, "
        r"not by dataset='world'$",
    ):
        train.parse_args([f'--data_path={text}'])


def test_help_describes_every_key():
    p = subprocess.run(
        [sys.executable, 'train.py', '--help'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and p.stderr == ''
    described = {}
    for line in p.stdout.splitlines():
        if line.startswith('  --') and '=' in line:
            key, rest = line[4:].split('=', 1)
            described[key] = rest.split(None, 1)[1] if len(rest.split(None, 1)) == 2 else ''
    assert described.keys() == train.DEFAULTS.keys()
    assert [k for k, d in described.items() if len(d) < 5] == []
    assert described['overwrite'].startswith('let a new run replace')


class CreatesAFile:
    """Unpickling this would open (create) a file: what a hostile checkpoint could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return builtins.open, (self.path, 'w')


def hostile_checkpoint(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'hostile.pt'
    torch.save(
        {
            'model_args': {},
            'model': CreatesAFile(str(marker)),
            'adapter': CreatesAFile(str(marker)),
        },
        path,
    )
    return path, marker


def test_hostile_checkpoint_as_init_from_is_refused(tmp_path):
    path, marker = hostile_checkpoint(tmp_path)
    with pytest.raises(ValueError) as e:
        train.main(TINY + [f'--init_from={path}', f'--out_dir={tmp_path / "out"}'])
    assert str(e.value).startswith(f"{path}: not a loadable checkpoint")
    assert not marker.exists() and not (tmp_path / 'out').exists()


def test_hostile_checkpoint_in_cat_adapters_is_refused(base, tmp_path):
    path, marker = hostile_checkpoint(tmp_path)
    with pytest.raises(ValueError) as e:
        train.main(
            TINY
            + [
                f'--init_from={base / "ckpt.pt"}',
                '--adapter=cat',
                f'--cat_adapters={path}',
                f'--out_dir={tmp_path / "out"}',
            ]
        )
    assert str(path) in str(e.value) and 'not a loadable checkpoint' in str(e.value)
    assert not marker.exists() and not (tmp_path / 'out').exists()
