"""The faults and bad inputs a new user meets in train.py: each one loses nothing, says so in one line,
and (run as a program) exits with status 1 and no traceback."""

import builtins
import errno
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import adapters
import data
import train
from formats import interop
from model import GPT, GPTConfig
from sources import world

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
        # finite, but the first step blows the weights up
        tiny_run(tmp_path / 'out', '--learning_rate=1e30')
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


@pytest.mark.parametrize(
    'fault, free, why',
    [  # a real OSError keeps its errno; torch's own writer hides it, so only then is space looked at
        (
            OSError(errno.ENOSPC, 'No space left on device'),
            2**40,
            'No space left on device (ENOSPC): the disk is full',
        ),
        (OSError(errno.EROFS, 'Read-only file system'), 2**20, 'Read-only file system (EROFS)'),
        (
            RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1024'),
            2**20,
            'disk full (1 MiB free in {run_dir})',
        ),
        (
            RuntimeError('[enforce fail at inline_container.cc:672] . file write failed'),
            2**40,
            'RuntimeError: [enforce fail at inline_container.cc:672] . file write failed',
        ),
    ],
)
def test_a_failed_checkpoint_write_names_its_real_cause_and_keeps_the_previous(
    run_dir, monkeypatch, fault, free, why
):
    before = saved(run_dir)
    path = str(run_dir / 'ckpt.pt')
    tmp = f'{path}.{os.getpid()}.tmp'

    def write_half_then_fail(obj, f, *a, **k):
        f.write(b'PK\x03\x04' + bytes(1000))
        f.flush()
        assert os.path.getsize(tmp) == 1004  # the partial file is there when the fault comes
        raise fault

    monkeypatch.setattr(torch, 'save', write_half_then_fail)
    monkeypatch.setattr(
        shutil, 'disk_usage', lambda p: SimpleNamespace(total=2**41, used=2**41 - free, free=free)
    )
    with pytest.raises(RuntimeError) as e:
        train.main(
            [f'--out_dir={run_dir}', '--init_from=resume', '--max_iters=3', '--eval_interval=1']
        )
    monkeypatch.undo()
    assert str(e.value) == (
        f"could not write {path}: {why.format(run_dir=run_dir)}; the previous {path} is "
        f"untouched and the partial {tmp} was removed"
    )
    assert sorted(os.listdir(run_dir)) == ['ckpt.pt']  # no partial file, no lock file
    after = saved(run_dir)
    assert after['iter_num'] == 2 and same_weights(after, before)


def test_stale_partial_checkpoint_is_removed_at_start(run_dir, capsys):
    tmp = run_dir / 'ckpt.pt.tmp'
    tmp.write_bytes(b'PK\x03\x04 left by a kill -9 during a write')
    before = saved(run_dir)
    # nothing left to train: no checkpoint is written
    train.main([f'--out_dir={run_dir}', '--init_from=resume'])
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


# -----------------------------------------------------------------------------------------------
# issue 21: one run per out_dir, no run over its own input, Ctrl-C, checks before work, foreign
# formats, faults named by their real cause, short data, and the cases that were silent


def cli(capsys, script, *args):
    """A script run as a program (`python script args`, its __main__ block), in this process to
    spare an interpreter's start-up: (exit status, stderr lines)."""
    argv = sys.argv
    sys.argv = [script, *args]
    capsys.readouterr()
    try:
        if script == 'formats.interop':  # its main() is what `python -m` runs, errors included
            interop.main(args)
        else:
            runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
    err = capsys.readouterr().err.strip().splitlines()
    if isinstance(code, str):  # sys.exit("message"): Python prints it and exits with 1
        code, err = 1, err + [code]
    return code, err


def dead_pid():
    """The id of a process that has ended."""
    p = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True)
    return int(p.stdout)


def start_train_py(out_dir, *args, prelude=''):
    """train.py as a user starts it, running on (line-buffered output read as it comes);
    prelude: Python run first in the same interpreter (a slow write to catch a Ctrl-C in)."""
    code = (
        f"{prelude}\nimport runpy, sys\nsys.argv = ['train.py'] + sys.argv[1:]\n"
        "runpy.run_path('train.py', run_name='__main__')"
    )
    return subprocess.Popen(
        [sys.executable, '-c', code, *TINY, f'--out_dir={out_dir}', *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )


def read_until(p, start):
    """Lines of p's output up to the first that starts with `start`."""
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith(start):
            return lines
    raise AssertionError(f"no line starting {start!r}: {lines[-5:]}, {p.stderr.read()}")


def test_a_second_run_into_a_busy_out_dir_refuses_and_ctrl_c_keeps_the_last_checkpoint(
    tmp_path, capsys
):
    out = tmp_path / 'run'
    first = start_train_py(out, '--max_iters=100000', '--eval_interval=4')
    try:
        read_until(first, 'iter 5:')  # it has saved at iteration 4 and trains on
        lock = out / 'train.lock'
        assert lock.read_text() == f'{first.pid}\n'
        busy = (
            f"error: {out} is in use by another run (PID {first.pid}, holding {lock}): wait for it "
            "to end, or pass another --out_dir"
        )
        for args in (['--max_iters=3', '--overwrite=True'], ['--init_from=resume']):
            code, lines = cli(capsys, 'train.py', *TINY, f'--out_dir={out}', *args)
            assert (code, lines) == (1, [busy])
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    m = re.fullmatch(
        r"interrupted at iteration (\d+); the last checkpoint \(iteration (\d+)\) is kept at "
        + re.escape(str(out / 'ckpt.pt'))
        + r": resume with --init_from=resume\n",
        err,
    )
    assert first.returncode == 130 and m, err
    done, kept = int(m[1]), int(m[2])  # what the line says is what is on disk
    assert kept == saved(out)['iter_num'] and kept % 4 == 0 and 4 <= kept <= done
    assert sorted(os.listdir(out)) == ['ckpt.pt']  # no lock and no partial file left


SLOW_WRITE = """
import time, torch
def slow_save(obj, f, *a, **k):
    f.write(b'PK' + bytes(4096)); f.flush(); print('writing', flush=True); time.sleep(120)
torch.save = slow_save
"""
SLOW_RENAME = """
import os, time
real_replace = os.replace
def replace_then_wait(src, dst):
    real_replace(src, dst)
    if str(dst).endswith('ckpt.pt'):
        print('writing', flush=True); time.sleep(120)
os.replace = replace_then_wait
"""


@pytest.mark.parametrize(
    'hook, kept', [(SLOW_WRITE, 2), (SLOW_RENAME, 4)], ids=['mid-write', 'just-renamed']
)
def test_ctrl_c_while_saving_leaves_no_partial_file_and_names_what_is_kept(run_dir, hook, kept):
    """The Ctrl-C lands inside the write (torch.save has written part of the file, then waits), or
    just after the rename put the new checkpoint in place: the line names what is on disk."""
    before = saved(run_dir)
    p = start_train_py(run_dir, '--init_from=resume', '--max_iters=6', prelude=hook)
    try:
        read_until(p, 'writing')
        tmp = run_dir / f'ckpt.pt.{p.pid}.tmp'
        assert tmp.exists() == (hook == SLOW_WRITE)  # the half-written file, under its own name
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and err == (
        f"interrupted at iteration 4; the last checkpoint (iteration {kept}) is kept at "
        f"{run_dir / 'ckpt.pt'}: resume with --init_from=resume\n"
    )
    assert sorted(os.listdir(run_dir)) == ['ckpt.pt'] and saved(run_dir)['iter_num'] == kept
    assert same_weights(saved(run_dir), before) == (kept == 2)


def test_ctrl_c_in_a_config_file_is_one_line(tmp_path, capsys):
    cfg = tmp_path / 'stop.py'
    cfg.write_text("max_iters = 10\nraise KeyboardInterrupt\n")
    code, lines = cli(capsys, 'train.py', str(cfg), f'--out_dir={tmp_path / "out"}')
    assert (code, lines) == (
        130,
        [f"interrupted in config file {cfg}, line 2: nothing was written"],
    )
    assert not (tmp_path / 'out').exists()


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_notice(run_dir, capsys):
    lock, pid = run_dir / 'train.lock', dead_pid()
    lock.write_text(f'{pid}\n')  # as a run killed with kill -9 leaves it
    train.main([f'--out_dir={run_dir}', '--init_from=resume', '--max_iters=3'])
    assert (
        f"took over {lock} from PID {pid}, which ended without releasing it (killed?)"
        in capsys.readouterr().out
    )
    assert sorted(os.listdir(run_dir)) == ['ckpt.pt'] and saved(run_dir)['iter_num'] == 3


def test_only_a_dead_writers_partial_checkpoint_is_removed(run_dir, capsys):
    dead = run_dir / f'ckpt.pt.{dead_pid()}.tmp'
    alive = run_dir / f'ckpt.pt.{os.getppid()}.tmp'  # a living process's write in progress
    dead.write_bytes(b'PK\x03\x04')
    alive.write_bytes(b'PK\x03\x04')
    train.main([f'--out_dir={run_dir}', '--init_from=resume'])
    out = capsys.readouterr().out
    assert f"removed {dead}, a partial checkpoint left by an interrupted write" in out
    assert str(alive) not in out and alive.exists() and not dead.exists()


def test_a_run_never_writes_over_its_own_input(base, run_dir, tmp_path, capsys):
    before, ckpt = saved(run_dir), run_dir / 'ckpt.pt'
    code, lines = cli(
        capsys,
        'train.py',
        *TINY,
        f'--init_from={ckpt}',
        f'--out_dir={run_dir}',
        '--overwrite=True',
        '--adapter=lora',
    )
    assert (code, lines) == (
        1,
        [
            f"error: --init_from={ckpt} is {ckpt}, which this run writes: it would destroy its own "
            "input, whatever --overwrite says; pass another --out_dir"
        ],
    )
    link = tmp_path / 'same.pt'  # another name of the same file
    link.symlink_to(ckpt)
    with pytest.raises(ValueError, match=r"^--cat_adapters=.*same.pt is .*ckpt.pt, which this run"):
        train.main(
            TINY
            + [f'--init_from={base / "ckpt.pt"}', '--adapter=cat', f'--cat_adapters={link}']
            + [f'--out_dir={run_dir}', '--overwrite=True']
        )
    assert same_weights(saved(run_dir), before) and sorted(os.listdir(run_dir)) == ['ckpt.pt']


MEMORY = r"(\d+(\.\d+)? [KMGTP]?i?B)"


@pytest.mark.parametrize(
    'args, message',
    [
        (['--eval_split=foo'], "eval_split='foo': choose 'test' or 'val'"),
        (['--warmup_iters=-5'], "option warmup_iters must be 0 or more, got -5"),
        (['--eval_max_items=-1'], "option eval_max_items must be 0 or more, got -1"),
        (['--dropout=1.5'], "option dropout must be in [0, 1), got 1.5"),
        (
            ['--n_embd=30', '--n_head=4'],
            "n_embd=30 is not a multiple of n_head=4: each head gets n_embd / n_head dimensions",
        ),
        (['--dataset=mixtur'], "unknown dataset 'mixtur': use one of "),
        (
            ['--init_from=out/no/such/ckpt.pt'],
            "no checkpoint at out/no/such/ckpt.pt: init_from takes 'scratch', 'resume', a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), or an existing train.py checkpoint or GPT-2 directory",
        ),
        (
            ['--batch_size=100000000'],
            rf"^a training step of batch_size=100000000 x block_size=32 on a 1-layer, 16-wide model needs at least {MEMORY} \(weights {MEMORY}, gradients and AdamW state {MEMORY}, batch {MEMORY}, activations {MEMORY}\) but this machine has {MEMORY} of available memory: lower batch_size \(gradient_accumulation_steps keeps the tokens per step\), block_size or the model's size$",
        ),
        (
            ['--n_layer=1000000', '--n_embd=256'],
            r"^a training step of batch_size=4 x block_size=32 on a 1000000-layer, 256-wide model needs at least [\d.]+ TiB \(weights [\d.]+ TiB",
        ),
    ],
)
def test_options_are_checked_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    """Each refused at once (no data built, no model made), where it used to fail after training,
    run silently wrong, or hang."""
    monkeypatch.setattr(data, 'get_dataset', None)  # any work would fail another way
    monkeypatch.setattr(train, 'GPT', None)
    code, lines = cli(capsys, 'train.py', *TINY, f'--out_dir={tmp_path / "out"}', *args)
    assert code == 1 and len(lines) == 1, lines
    if message.startswith('^'):
        assert re.match(message, lines[0].removeprefix('error: ')), lines[0]
    else:
        assert lines[0].startswith('error: ' + message), lines[0]
    assert not (tmp_path / 'out').exists()


def test_cat_refuses_adapter_targets_other_than_its_skills(base, tmp_path):
    skill = tmp_path / 'skill'
    tiny_run(skill, f'--init_from={base / "ckpt.pt"}', '--adapter=lora')
    cat = [
        f'--init_from={base / "ckpt.pt"}',
        '--adapter=cat',
        f'--cat_adapters={skill / "ckpt.pt"}',
    ]
    with pytest.raises(ValueError) as e:
        tiny_run(tmp_path / 'cat', *cat, '--adapter_targets=attn.q,mlp.c_fc')
    assert str(e.value) == (
        "adapter=cat adapts what its skill LoRAs adapt (attn.q,attn.v), not "
        "adapter_targets='attn.q,mlp.c_fc': drop --adapter_targets"
    )
    assert not (tmp_path / 'cat').exists()
    assert tiny_run(tmp_path / 'cat', *cat, '--adapter_targets=attn.q,attn.v')['iters'] == 2


def test_block_size_too_small_for_the_items_is_refused(tmp_path):
    with pytest.raises(ValueError) as e:
        train.main(TINY + ['--dataset=task:city_of', '--block_size=1', f'--out_dir={tmp_path}/o'])
    assert re.fullmatch(
        r"block_size=1 cuts the answer of 720 of 720 training items of city_of: pass "
        r"--block_size=(\d+) or more \(the longest item needs \1\)",
        str(e.value),
    ), str(e.value)
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('lines', [0, 1])
def test_too_short_text_data_names_the_file_and_what_it_needs(tmp_path, capsys, lines):
    text = tmp_path / 'short.txt'
    text.write_text('one line of text, far fewer tokens than a block\n' * lines)
    code, err = cli(
        capsys,
        'train.py',
        *TINY,
        '--dataset=text',
        f'--data_path={text}',
        f'--data_dir={tmp_path / "data"}',
        f'--out_dir={tmp_path / "out"}',
    )
    assert (code, err) == (
        1,
        [
            f"error: {text} is too short for block_size=32: the train part (the first 90% of its "
            "lines, at least one) has 0 tokens, and a training window needs 33: give a longer "
            "file (two lines or more), or a smaller --block_size"
        ],
    )


@pytest.fixture(scope='module')
def hf_dir(base, tmp_path_factory):
    """The base written as a Hugging Face GPT-2 directory."""
    out = tmp_path_factory.mktemp('hf') / 'gpt2'
    interop.export_hf(str(base / 'ckpt.pt'), str(out))
    return out


def foreign(hf_dir, tmp_path, edit=None, weights=None):
    """A copy of hf_dir with its config.json edited, or its weights replaced."""
    d = tmp_path / 'foreign'
    shutil.copytree(hf_dir, d)
    if edit:
        cfg = json.loads((d / 'config.json').read_text())
        (d / 'config.json').write_text(json.dumps(edit(cfg)))
    if weights is not None:
        os.remove(d / 'model.safetensors')
        torch.save(weights, d / 'pytorch_model.bin')
    return d


def llama_keys(c):
    return {'model_type': 'llama', 'hidden_size': c['n_embd'], 'num_hidden_layers': c['n_layer']}


@pytest.mark.parametrize(
    'edit, weights, message',
    [
        (
            llama_keys,
            None,
            "{d}/config.json: model_type='llama': only GPT-2 (model_type 'gpt2') loads here",
        ),
        (
            lambda c: {**c, 'model_type': 'llama'},
            None,
            "{d}/config.json: model_type='llama': only GPT-2 (model_type 'gpt2') loads here",
        ),
        (
            lambda c: {k: v for k, v in c.items() if k != 'n_positions'},
            None,
            "{d}/config.json has no 'n_positions', which every GPT-2 config.json has",
        ),
        (lambda c: [c], None, "{d}/config.json: expected a JSON object, got a JSON list"),
        (
            lambda c: {**c, 'n_layer': 10**7},
            None,
            r"^{d}/config.json describes a model of [\d.e+]+ parameters, which needs at least {m} \(fp32 weights {m}\) but this machine has {m} of available memory: is this the config.json you meant\?$",
        ),
        (
            None,
            {'x': CreatesAFile('{marker}')},
            "{d}/pytorch_model.bin: not a loadable weights file (UnpicklingError); only plain tensors are accepted",
        ),
    ],
)
def test_a_foreign_hugging_face_directory_is_refused_in_one_line(
    hf_dir, tmp_path, capsys, edit, weights, message
):
    marker = tmp_path / 'pwned'
    if weights:
        weights = {'x': CreatesAFile(str(marker))}
    d = foreign(hf_dir, tmp_path, edit, weights)
    message = message.format(d=d, m=MEMORY, marker=marker)
    for script, args, prefix in (
        (
            'train.py',
            [*TINY, f'--init_from={d}', '--adapter=lora', f'--out_dir={tmp_path / "o"}'],
            'error: ',
        ),
        ('formats.interop', ['export-hf', str(d), str(tmp_path / 'exported')], 'formats.interop: '),
    ):
        code, lines = cli(capsys, script, *args)
        assert code == 1 and len(lines) == 1, lines
        if message.startswith('^'):
            assert re.match(message, lines[0].removeprefix(prefix)), lines[0]
        else:
            assert lines[0] == prefix + message
    assert not marker.exists() and not (tmp_path / 'o').exists()
    assert not (tmp_path / 'exported').exists()


def test_a_peft_adapter_config_of_the_wrong_shape_is_refused(tmp_path, capsys):
    d = tmp_path / 'peft'
    d.mkdir()
    (d / 'adapter_config.json').write_text('[{"peft_type": "LORA"}]')
    code, lines = cli(capsys, 'formats.interop', 'import-peft', str(d), str(tmp_path / 'a.pt'))
    assert (code, lines) == (
        1,
        [
            f"formats.interop: {d}/adapter_config.json: expected a JSON object (PEFT's adapter "
            "config), got a JSON list"
        ],
    )


@pytest.mark.parametrize(
    'drop, message',
    [
        (
            'iter_num',
            "{p} has no 'iter_num': not a checkpoint train.py wrote, nothing to resume (start a new run with another --out_dir)",
        ),
        (
            'rng',
            "{p} has no 'rng': not a checkpoint train.py wrote, nothing to resume (start a new run with another --out_dir)",
        ),
        (
            'model_args',
            "{p} has no 'model_args': not a checkpoint train.py wrote, nothing to resume (start a new run with another --out_dir)",
        ),
        (
            'shape',
            "{p}: its weights do not fit its own model_args (a damaged or edited checkpoint): nothing to resume",
        ),
    ],
)
def test_a_foreign_checkpoint_is_not_resumed(run_dir, capsys, drop, message):
    p = run_dir / 'ckpt.pt'
    ck = saved(run_dir)
    if drop == 'shape':
        ck['model_args']['n_embd'] = 32
    else:
        del ck[drop]
    torch.save(ck, p)
    code, lines = cli(capsys, 'train.py', f'--out_dir={run_dir}', '--init_from=resume')
    assert (code, lines) == (1, ['error: ' + message.format(p=p)])


def test_a_resumed_adapter_checkpoint_without_its_base_is_refused(base, tmp_path):
    out = tmp_path / 'lora'
    tiny_run(out, f'--init_from={base / "ckpt.pt"}', '--adapter=lora')
    ck = saved(out)
    del ck['base']
    torch.save(ck, out / 'ckpt.pt')
    with pytest.raises(ValueError) as e:
        train.main([f'--out_dir={out}', '--init_from=resume'])
    assert str(e.value) == (
        f"{out / 'ckpt.pt'} has no 'base': not a checkpoint train.py wrote, nothing to resume "
        "(start a new run with another --out_dir)"
    )


@pytest.mark.parametrize(
    'err, cause',
    [
        (errno.ENOSPC, 'No space left on device (ENOSPC): the disk is full'),
        (errno.EROFS, 'Read-only file system (EROFS)'),
    ],
)
def test_export_fault_names_its_cause_and_leaves_no_folder(
    base, tmp_path, capsys, monkeypatch, err, cause
):
    out = tmp_path / 'exported'
    real = interop.write_safetensors

    def fail_midway(path, tensors, metadata=None):
        with open(path, 'wb') as f:
            f.write(b'\0' * 64)
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(interop, 'write_safetensors', fail_midway)
    code, lines = cli(capsys, 'formats.interop', 'export-hf', str(base / 'ckpt.pt'), str(out))
    assert (code, lines) == (
        1,
        [
            f"formats.interop: could not write {out / 'model.safetensors'}: {cause}; nothing was left at {out}"
        ],
    )
    assert not out.exists()  # so a rerun is not refused as "already exists"
    monkeypatch.setattr(interop, 'write_safetensors', real)
    assert cli(capsys, 'formats.interop', 'export-hf', str(base / 'ckpt.pt'), str(out))[0] == 0


def test_export_under_a_file_or_onto_its_input_is_one_line(base, tmp_path, capsys):
    ckpt = base / 'ckpt.pt'
    code, lines = cli(capsys, 'formats.interop', 'export-hf', str(ckpt), str(ckpt / 'sub'))
    assert (code, lines) == (
        1,
        [f"formats.interop: could not write {ckpt / 'sub'}: Not a directory (ENOTDIR)"],
    )
    code, lines = cli(capsys, 'formats.interop', 'export-hf', str(ckpt), str(base))
    assert (code, lines) == (
        1,
        [
            f"formats.interop: {base} holds this command's input {ckpt}: writing there would "
            "destroy it; give a new path"
        ],
    )


def test_a_read_only_disk_on_import_is_not_called_full(tmp_path, monkeypatch):
    real_open = builtins.open

    def read_only(path, mode='r', *a, **k):
        if 'w' in mode:
            raise OSError(errno.EROFS, 'Read-only file system', str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, 'open', read_only)
    monkeypatch.setattr(
        shutil, 'disk_usage', lambda p: SimpleNamespace(total=2**30, used=2**30, free=0)
    )
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    adapters.add_adapters(model, 'lora', r=2)
    path = str(tmp_path / 'new' / 'a.pt')
    with pytest.raises(RuntimeError) as e:
        interop.save_adapter(path, model, {'path': 'b', 'fingerprint': 'f'})
    monkeypatch.undo()
    assert str(e.value) == (
        f"could not write {path}: Read-only file system (EROFS); no checkpoint was written"
    )
    assert not (tmp_path / 'new').exists()


def test_a_full_data_dir_names_the_path_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """The world's corpus.txt fails half-written, as on a full disk."""
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, s):
            self.f.write(s[:100])
            self.f.flush()
            raise OSError(errno.ENOSPC, 'No space left on device')

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_corpus(path, mode='r', *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith('corpus.txt.tmp') else f

    monkeypatch.setattr(world, 'open', full_corpus, raising=False)
    data_dir = tmp_path / 'data'
    code, lines = cli(
        capsys, 'train.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={tmp_path / "o"}'
    )
    assert (code, lines) == (
        1,
        [
            f"error: could not write {data_dir}: No space left on device (ENOSPC): the disk is "
            "full; no partial file was left"
        ],
    )
    assert [f for _, _, fs in os.walk(data_dir) for f in fs if f.endswith('.tmp')] == []
    assert not (tmp_path / 'o').exists()


def test_data_dir_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / 'file').write_text('x')
    code, lines = cli(
        capsys,
        'train.py',
        *TINY,
        f'--data_dir={tmp_path / "file" / "data"}',
        f'--out_dir={tmp_path / "o"}',
    )
    assert (code, lines) == (
        1,
        [
            f"error: could not write {tmp_path / 'file' / 'data'}: Not a directory (ENOTDIR); no partial file was left"
        ],
    )


@pytest.mark.parametrize(
    'args, message',
    [
        (['--top_k=0'], "--top_k must be a positive number of singular vectors, got 0"),
        (['--top_k=-3'], "--top_k must be a positive number of singular vectors, got -3"),
        (['--eps=0.3,nan'], "--eps takes thresholds in (0, 1] on |cosine|, got nan"),
        (['--eps=1.5'], "--eps takes thresholds in (0, 1] on |cosine|, got 1.5"),
        (
            ['--out={d}/old'],
            "{d}/old.json already exists: give another --out, or --overwrite to replace it",
        ),
        (
            ['--out={d}/run', '--overwrite'],
            "--out={d}/run would write {d}/run.json, which is this analysis's input {d}/run.json: give another --out (--overwrite never replaces an input)",
        ),
    ],
)
def test_analyze_refuses_bad_settings_and_replaces_nothing_unasked(tmp_path, capsys, args, message):
    d = tmp_path
    (d / 'old.json').write_text('{"kept": true}')
    (d / 'run.json').write_text('not a checkpoint')  # a result given by path, as a file
    args = [a.format(d=d) for a in args]
    code, lines = cli(capsys, 'analyze.py', f'--base={d / "base"}', str(d / 'run.json'), *args)
    assert (code, lines) == (1, ['analyze.py: ' + message.format(d=d)])
    assert (d / 'old.json').read_text() == '{"kept": true}'
    assert (d / 'run.json').read_text() == 'not a checkpoint'


def test_ctrl_c_inside_torch_save_is_a_ctrl_c_not_a_write_error(tmp_path, monkeypatch):
    """A SIGINT that lands inside torch.save's C++ writer (it calls the file's write) comes out of
    torch as a RuntimeError ('unexpected pos'); write_checkpoint must still report a Ctrl-C (so that
    train.py prints its one 'interrupted' line, exit status 130), and leave no partial file."""
    from formats import checkpoint

    real_open = open

    class InterruptedFile:  # the third write of the checkpoint receives a Ctrl-C
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, b):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def opening(path, mode='r', *a, **k):
        f = real_open(path, mode, *a, **k)
        return InterruptedFile(f) if 'w' in mode else f

    monkeypatch.setattr(checkpoint, 'open', opening, raising=False)
    path = tmp_path / 'ckpt.pt'
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write_checkpoint({'w': torch.randn(1000, 100)}, str(path))
    assert os.listdir(tmp_path) == []
