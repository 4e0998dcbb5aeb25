"""train.py: options and their errors, exact resume, atomic checkpoints, NaN handling, fine-tuning."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import TINY_MODEL

import train
from formats.checkpoint import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*TINY_MODEL, '--log_interval=5', '--dropout=0.1', '--warmup_iters=5']


def run(tmp_path, *args, name='run'):
    return train.main(TINY + [f'--out_dir={tmp_path / name}', *args])


def test_config_file_then_command_line(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("batch_size = 7\nlearning_rate = 3e-4\nadapter = 'lora'\n")
    c = train.parse_args([str(cfg), '--batch_size=9', '--lora_alpha=8', '--dataset=mixture'])
    assert (c['batch_size'], c['learning_rate'], c['adapter'], c['lora_alpha'], c['dataset']) == (
        9,
        3e-4,
        'lora',
        8.0,
        'mixture',
    )
    assert isinstance(c['lora_alpha'], float)


@pytest.mark.parametrize(
    'args, error, message',
    [
        (['--bogus=1'], ValueError, "unknown option 'bogus' in the command line"),
        (['--batch_size=1.5'], ValueError, 'option batch_size expects int but got 1.5'),
        (['--compile=1'], ValueError, 'option compile expects bool but got 1'),
        (['--batch_size'], ValueError, "expected --key=value, got '--batch_size'"),
        (
            ['config/does_not_exist.py'],
            FileNotFoundError,
            "config file 'config/does_not_exist.py' not found",
        ),
        (['--adapter=dora'], ValueError, "unknown adapter 'dora'"),
        (['--max_iters=0'], ValueError, 'option max_iters must be positive'),
    ],
)
def test_bad_options(args, error, message):
    with pytest.raises(error, match=message):
        train.parse_args(args)


def test_unknown_key_in_config_file(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("n_layers = 3\n")
    with pytest.raises(ValueError, match=f"unknown option 'n_layers' in {cfg}"):
        train.parse_args([str(cfg)])


def test_bad_input_is_one_line_on_stderr(tmp_path):
    for args, msg in [
        (['--lr=1'], "unknown option 'lr'"),
        ([f'--out_dir={tmp_path}', '--init_from=resume'], 'nothing to resume: no checkpoint at'),
        (['--dtype=float8'], 'unknown dtype'),
        (['--init_from=' + str(tmp_path / 'nope.pt'), '--max_iters=1'], 'no checkpoint at'),
    ] + (
        [(['--device=cuda'], 'torch sees no CUDA GPU here')]
        if not torch.cuda.is_available()
        else []
    ):
        p = subprocess.run(
            [sys.executable, 'train.py', *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], p.stderr


class Crash(Exception):
    pass


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    args = ['--max_iters=30', '--eval_interval=10']
    full = run(tmp_path, *args, name='full')

    real_save = train.save_checkpoint

    def save_then_crash(path, model, optimizer, scaler, c, iter_num, *rest):
        real_save(path, model, optimizer, scaler, c, iter_num, *rest)
        if iter_num == 20:
            raise Crash  # the process dies right after the checkpoint at step 20

    monkeypatch.setattr(train, 'save_checkpoint', save_then_crash)
    with pytest.raises(Crash):
        run(tmp_path, *args, name='crashed')
    monkeypatch.setattr(train, 'save_checkpoint', real_save)
    resumed = train.main([f'--out_dir={tmp_path / "crashed"}', '--init_from=resume'])
    assert resumed['iters'] == 30 and len(resumed['losses']) == 10
    assert resumed['losses'] == full['losses'][20:]  # bit for bit, dropout included
    assert resumed['val_loss'] == full['val_loss']
    # the validation curve: one point per evaluation, the last one the run's val loss
    assert [i for i, _ in full['val_curve']] == [0, 10, 20, 30]
    assert (
        full['val_curve'][-1][1] == full['val_loss']
        and resumed['val_curve'][-1] == full['val_curve'][-1]
    )


def test_interrupted_checkpoint_write_keeps_last_good(tmp_path, monkeypatch):
    run(tmp_path, '--max_iters=10', '--eval_interval=10')
    path = tmp_path / 'run' / 'ckpt.pt'
    before = torch.load(path, weights_only=True)

    def torn_write(obj, f, *a, **k):
        f.write(b'PK\x03\x04 half a checkpoint')  # f: the temp file write_checkpoint opened
        raise KeyboardInterrupt  # killed between writing the temp file and the rename

    monkeypatch.setattr(torch, 'save', torn_write)
    with pytest.raises(KeyboardInterrupt):
        train.main([f'--out_dir={tmp_path / "run"}', '--init_from=resume', '--max_iters=20'])
    monkeypatch.undo()
    after = torch.load(path, weights_only=True)
    assert after['iter_num'] == before['iter_num'] == 10
    assert all(torch.equal(after['model'][k], before['model'][k]) for k in before['model'])
    model, _ = load_model(str(path))
    assert model.config.n_layer == 2


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    import model as model_module

    real_save = train.save_checkpoint

    def save_then_poison(*a):
        real_save(*a)
        monkeypatch.setattr(
            model_module.F,
            'cross_entropy',
            lambda *x, **k: torch.tensor(float('nan'), requires_grad=True),
        )

    monkeypatch.setattr(train, 'save_checkpoint', save_then_poison)
    with pytest.raises(
        RuntimeError,
        match=r'loss is nan at step 10; stopped, last good checkpoint kept at .*ckpt.pt',
    ):
        run(tmp_path, '--max_iters=20', '--eval_interval=10')
    monkeypatch.undo()
    ckpt = torch.load(tmp_path / 'run' / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 10 and all(torch.isfinite(v).all() for v in ckpt['model'].values())


def test_pretrain_learns_and_full_finetune_records_base(tmp_path):
    s = run(
        tmp_path,
        '--max_iters=150',
        '--eval_interval=150',
        '--batch_size=16',
        '--learning_rate=3e-3',
        '--dropout=0.0',
    )
    assert s['val_loss'] < 0.85 * s['unigram_entropy']  # learned more than token frequencies
    base_path = tmp_path / 'run' / 'ckpt.pt'
    base_model, _ = load_model(str(base_path))
    ft = train.main(
        TINY
        + [
            f'--out_dir={tmp_path / "ft"}',
            f'--init_from={base_path}',
            '--max_iters=4',
            '--eval_interval=4',
            '--final_eval=False',
        ]
    )
    ckpt = torch.load(tmp_path / 'ft' / 'ckpt.pt', weights_only=True)
    assert ckpt['base']['fingerprint'] == base_model.fingerprint()
    assert ft['trainable_params'] == ft['total_params']
    changed = [
        k for k in ckpt['model'] if not torch.equal(ckpt['model'][k], base_model.state_dict()[k])
    ]
    assert len(changed) > 10  # every weight trains in full fine-tuning


def crash_after_checkpoint(at, monkeypatch, args):
    """Run train.main(args) until it has written the checkpoint of iteration `at`, then die there."""
    real_save = train.save_checkpoint

    def save_then_crash(path, model, optimizer, scaler, c, iter_num, *rest):
        real_save(path, model, optimizer, scaler, c, iter_num, *rest)
        if iter_num == at:
            raise Crash

    monkeypatch.setattr(train, 'save_checkpoint', save_then_crash)
    with pytest.raises(Crash):
        train.main(args)
    monkeypatch.setattr(train, 'save_checkpoint', real_save)


@pytest.mark.parametrize('method, dtype', [('lora', 'float32'), ('nola', 'bfloat16')])
def test_adapter_run_resumes_exactly_and_stores_only_the_adapter(
    tmp_path, monkeypatch, method, dtype
):
    run(tmp_path, '--max_iters=2', '--eval_interval=2', name='base')
    base = str(tmp_path / 'base' / 'ckpt.pt')
    # the resumed run must take its dtype from the checkpoint, not the default
    args = TINY + [
        f'--init_from={base}',
        f'--adapter={method}',
        '--dataset=mixture',
        '--max_iters=12',
        '--eval_interval=6',
        '--final_eval=False',
        f'--{method}_dropout=0.1',
        '--nola_k=16',
        '--nola_l=16',
        f'--dtype={dtype}',
    ]
    full = train.main(args + [f'--out_dir={tmp_path / "full"}'])
    crash_after_checkpoint(6, monkeypatch, args + [f'--out_dir={tmp_path / "crashed"}'])
    resumed = train.main([f'--out_dir={tmp_path / "crashed"}', '--init_from=resume'])
    assert resumed['losses'] == full['losses'][6:]
    ckpt = torch.load(tmp_path / 'full' / 'ckpt.pt', weights_only=True)
    assert 'model' not in ckpt and ckpt['adapter']['config']['method'] == method
    n_adapter = sum(t.numel() for t in ckpt['adapter']['state'].values() if t.is_floating_point())
    assert n_adapter == full['trainable_params'] < full['total_params'] / 10


def test_each_method_reads_its_own_options_with_the_class_defaults(tmp_path, monkeypatch):
    import adapters

    for method in adapters.METHODS:  # train.py's defaults are the classes' (test_adapters.py too)
        options = adapters.method_defaults(method)
        assert {k: train.DEFAULTS[f'{method}_{k}'] for k in options} == options
    run(tmp_path, '--max_iters=1', '--eval_interval=1', name='base')
    base = str(tmp_path / 'base' / 'ckpt.pt')
    mfu_calls = []
    real_mfu = train.GPT.flops_per_token
    monkeypatch.setattr(
        train.GPT, 'flops_per_token', lambda *a, **k: mfu_calls.append(k) or real_mfu(*a, **k)
    )
    # lora_r and lora_alpha belong to LoRA only: MultiLoRA takes multilora_r, multilora_alpha
    s = train.main(
        TINY
        + [
            f'--init_from={base}',
            '--adapter=multilora',
            '--multilora_n=2',
            '--multilora_r=3',
            '--lora_r=5',
            '--max_iters=1',
            '--eval_interval=1',
            '--log_interval=1',
            '--final_eval=False',
            f'--out_dir={tmp_path / "m"}',
        ]
    )
    matrices, d = 2 * 2, 32  # 2 layers x (q, v), each d x d
    assert s['trainable_params'] == matrices * (2 * 3 * 2 * d + 2)
    cfg = torch.load(tmp_path / 'm' / 'ckpt.pt', weights_only=True)['adapter']['config']
    assert cfg == {
        'method': 'multilora',
        'targets': 'attn.q,attn.v',
        'n': 2,
        'r': 3,
        'alpha': 16.0,
        'dropout': 0.0,
        'gate': 'scalar',
    }
    # GFLOP/s counts 4N per token for an adapter run
    assert mfu_calls[-1] == {'frozen_weights': True}
    run(tmp_path, '--max_iters=1', '--eval_interval=1', '--log_interval=1', name='full')
    assert mfu_calls[-1] == {'frozen_weights': False}
    with pytest.raises(ValueError, match="unknown option 'nola_rank'"):
        train.parse_args(['--nola_rank=2'])


def test_cat_run_resumes_without_the_skill_files(tmp_path, monkeypatch):
    run(tmp_path, '--max_iters=1', '--eval_interval=1', name='base')
    base = str(tmp_path / 'base' / 'ckpt.pt')
    for i in (1, 2):
        train.main(
            TINY
            + [
                f'--init_from={base}',
                '--adapter=lora',
                f'--dataset=skill{i}',
                '--lora_r=2',
                '--max_iters=2',
                '--eval_interval=2',
                '--final_eval=False',
                f'--out_dir={tmp_path / f"skill{i}"}',
            ]
        )
    skills = f'{tmp_path / "skill1" / "ckpt.pt"},{tmp_path / "skill2" / "ckpt.pt"}'
    args = TINY + [
        f'--init_from={base}',
        '--adapter=cat',
        f'--cat_adapters={skills}',
        '--cat_weights=softmax',
        '--cat_seed=3',
        '--dataset=composite',
        '--max_iters=4',
        '--eval_interval=2',
        '--final_eval=False',
    ]
    full = train.main(args + [f'--out_dir={tmp_path / "full"}'])
    assert full['trainable_params'] == 2 * 2 * 2  # one weight per skill per adapted matrix
    crash_after_checkpoint(2, monkeypatch, args + [f'--out_dir={tmp_path / "crashed"}'])
    for i in (1, 2):
        os.remove(tmp_path / f'skill{i}' / 'ckpt.pt')
    resumed = train.main([f'--out_dir={tmp_path / "crashed"}', '--init_from=resume'])
    assert resumed['losses'] == full['losses'][2:]
    cfg = torch.load(tmp_path / 'full' / 'ckpt.pt', weights_only=True)['adapter']['config']
    assert cfg == {
        'method': 'cat',
        'targets': 'attn.q,attn.v',
        'ranks': [2, 2],
        'weights': 'softmax',
        'seed': 3,
    }


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'ckpt.pt').write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError, match='not a loadable checkpoint'):
        train.main([f'--out_dir={tmp_path / "bad"}', '--init_from=resume'])
    run(tmp_path, '--max_iters=1', '--eval_interval=1', name='base')
    ckpt = torch.load(tmp_path / 'base' / 'ckpt.pt', weights_only=True)
    ckpt['model_args']['n_embd'] = 64  # claims another shape than its weights have
    torch.save(ckpt, tmp_path / 'edited.pt')
    with pytest.raises(ValueError, match='do not fit its own model_args'):
        train.main(TINY + [f'--init_from={tmp_path / "edited.pt"}', f'--out_dir={tmp_path / "ft"}'])
    with pytest.raises(
        ValueError, match="trained with tokenizer='world' but this run uses 'world-bytes'"
    ):
        train.main(
            TINY
            + [
                f'--init_from={tmp_path / "base" / "ckpt.pt"}',
                '--tokenizer=world-bytes',
                f'--out_dir={tmp_path / "ft"}',
            ]
        )
