"""train.py under torchrun: N processes train what one process trains (the same global batch), rank 0
alone writes the checkpoint, a killed run resumes exactly. Real `torchrun --nproc_per_node=2`
subprocesses on the CPU (gloo), on a tiny model."""

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
from helpers import TINY_MODEL

import adapters
import data
import train
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*TINY_MODEL, '--log_interval=3', '--warmup_iters=2', '--final_eval=False']

# train.main in each process, logging which rank wrote which checkpoint and how many forwards each
# rank ran with gradient sync on (each is followed by one all-reduce of the gradients in its
# backward); killed (SIGKILL, as by the OOM killer or a lost node) right after writing the
# checkpoint of iteration `kill_at`
WORKER = """
import json, os, signal, sys
import train
rank = int(os.environ['RANK'])
log, kill_at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
real_save, real_wrap, synced = train.save_checkpoint, train.wrap_ddp, [0]
def save(path, model, optimizer, scaler, c, iter_num, *rest):
    real_save(path, model, optimizer, scaler, c, iter_num, *rest)
    with open(log, 'a') as f:
        f.write(f'save {rank} {iter_num}\\n')
    if iter_num == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
def count(ddp, args):
    synced[0] += ddp.require_backward_grad_sync
def wrap(model, dev):
    ddp = real_wrap(model, dev)
    ddp.register_forward_pre_hook(count)
    return ddp
train.save_checkpoint, train.wrap_ddp = save, wrap
summary = train.main(argv)
with open(log, 'a') as f:
    f.write(f'synced {rank} {synced[0]}\\n')
if rank == 0:
    with open(log + '.losses', 'w') as f:
        json.dump(summary['losses'], f)
"""


def torchrun(tmp_path, name, *args, kill_at=-1):
    """train.py in 2 processes; returns (exit status, the log's lines as (event, rank, number), rank
    0's step losses or None)."""
    worker = tmp_path / 'worker.py'
    worker.write_text(WORKER)
    log = tmp_path / f'{name}.log'
    p = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
        + [str(worker), str(log), str(kill_at), *TINY, f'--out_dir={tmp_path / name}', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT},
    )
    if kill_at < 0:
        assert p.returncode == 0, p.stderr[-3000:]
    events = [line.split() for line in log.read_text().split('\n') if line]
    events = [(e, int(rank), int(n)) for e, rank, n in events]
    losses = tmp_path / f'{name}.log.losses'
    return p.returncode, events, json.loads(losses.read_text()) if losses.exists() else None


def weights(path):
    ckpt = torch.load(path, weights_only=True)
    return ckpt['model'] if 'model' in ckpt else ckpt['adapter']['state']


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_processes_train_what_one_does_full_finetuning(tmp_path):
    # 4 micro-batches per step: each process runs two whole ones (nanoGPT's split) and syncs the
    # gradients once, after its last
    args = ['--max_iters=6', '--eval_interval=3', '--gradient_accumulation_steps=4']
    one = train.main(TINY + [f'--out_dir={tmp_path / "one"}', *args])
    code, events, losses = torchrun(tmp_path, 'two', *args)
    assert max_diff(weights(tmp_path / 'one/ckpt.pt'), weights(tmp_path / 'two/ckpt.pt')) < 1e-6
    assert len(losses) == 6 and max(abs(a - b) for a, b in zip(losses, one['losses'])) < 1e-6
    saves = [(rank, n) for e, rank, n in events if e == 'save']
    assert saves == [(0, 3), (0, 6)]  # rank 0 alone wrote, at each evaluation
    assert sorted(os.listdir(tmp_path / 'two')) == ['ckpt.pt']
    # the gradients are all-reduced once per step, after each process's second micro-batch
    assert sorted((rank, n) for e, rank, n in events if e == 'synced') == [(0, 6), (1, 6)]


def test_two_processes_train_what_one_does_lora(tmp_path):
    train.main(TINY + [f'--out_dir={tmp_path / "base"}', '--max_iters=2', '--eval_interval=2'])
    # one micro-batch per step: each process takes half its rows (uneven answer lengths: the
    # processes' losses are weighted by their share of the answer tokens)
    args = [
        f'--init_from={tmp_path / "base/ckpt.pt"}',
        '--adapter=lora',
        '--dataset=mixture',
        '--max_iters=6',
        '--eval_interval=6',
    ]
    train.main(TINY + [f'--out_dir={tmp_path / "one"}', *args])
    code, events, losses = torchrun(tmp_path, 'two', *args)
    one, two = weights(tmp_path / 'one/ckpt.pt'), weights(tmp_path / 'two/ckpt.pt')
    assert max_diff(one, two) < 1e-6
    lora_b = [k for k in one if k.endswith('lora_B')]
    assert lora_b and all(one[k].abs().max() > 1e-4 for k in lora_b)  # it did train
    assert [(e, rank, n) for e, rank, n in events if e == 'save'] == [('save', 0, 6)]


def test_killed_ddp_run_resumes_exactly(tmp_path):
    # dropout on: each process draws its own masks, and each one's stream is saved and restored
    args = ['--max_iters=8', '--eval_interval=4', '--dropout=0.1']
    _, _, full = torchrun(tmp_path, 'full', *args)
    code, events, _ = torchrun(tmp_path, 'killed', *args, kill_at=4)
    assert code != 0 and events == [('save', 0, 4)]
    assert torch.load(tmp_path / 'killed/ckpt.pt', weights_only=True)['iter_num'] == 4
    resume = ['--init_from=resume', '--out_dir=' + str(tmp_path / 'killed')]
    _, events, resumed = torchrun(tmp_path, 'resumed', *resume)
    assert ('save', 0, 8) in events and resumed == full[4:]
    assert max_diff(weights(tmp_path / 'full/ckpt.pt'), weights(tmp_path / 'killed/ckpt.pt')) == 0


def test_processes_must_share_a_step_equally(tmp_path, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')  # as torchrun --nproc_per_node=2 sets it, for rank 0
    with pytest.raises(ValueError) as e:
        train.main(TINY + [f'--out_dir={tmp_path}', '--batch_size=3'])
    assert str(e.value) == (
        "2 processes cannot share a step's 3 sequences (gradient_accumulation_steps x batch_size) "
        "equally: make gradient_accumulation_steps a multiple of 2"
    )


@pytest.mark.parametrize('dataset', ['world', 'mixture'])
def test_each_process_takes_its_rows_of_the_one_process_batch(dataset):
    ds = data.get_dataset(dataset, 32, data_dir='data', seed=1337)
    for G, B, N in [(1, 4, 2), (2, 4, 2), (3, 4, 2), (2, 2, 4)]:
        c = train.SimpleNamespace(gradient_accumulation_steps=G, batch_size=B)
        one, _ = train.draw_step(ds, c, torch.Generator().manual_seed(5), 0, 1, 'cpu')
        assert [s for _, _, s in one] == [1.0] * G  # one process: each micro-batch's mean as it is
        gens = [torch.Generator().manual_seed(5) for _ in range(N)]
        parts = [train.draw_step(ds, c, gens[r], r, N, 'cpu')[0] for r in range(N)]
        # the N processes' rows, in rank order, are the one process's rows
        rows = [x[i] for part in parts for x, _, _ in part for i in range(len(x))]
        assert len(rows) == G * B
        one_rows = [x[i] for x, _, _ in one for i in range(B)]
        assert all(torch.equal(a, b) for a, b in zip(rows, one_rows))
        # every process's stream is where the one process's is
        assert all(torch.equal(g.get_state(), gens[0].get_state()) for g in gens)
        # each micro-batch's pieces share its tokens: their shares (fraction x N) add up to N
        assert sum(share for part in parts for _, _, share in part) == pytest.approx(N * G)


def test_ddp_holds_and_broadcasts_only_the_trainable_parameters(monkeypatch):
    broadcast = []
    real = torch.distributed.utils._sync_params_and_buffers
    monkeypatch.setattr(
        torch.distributed.utils,
        '_sync_params_and_buffers',
        lambda group, states, *a: broadcast.extend(states) or real(group, states, *a),
    )
    store = tempfile.mktemp()
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=0, world_size=1)
    try:
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64))
        model.requires_grad_(False)
        adapters.add_adapters(model, 'nola', targets='attn.q,attn.v', k=4, l=4, r=2)
        ddp = train.wrap_ddp(model, 'cpu')
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_bytes = sum(4 * p.numel() for p in trainable)
        assert ddp._get_ddp_logging_data()['total_parameter_size_bytes'] == n_bytes
        assert sum(t.numel() * t.element_size() for t in broadcast) == n_bytes
    finally:
        dist.destroy_process_group()
