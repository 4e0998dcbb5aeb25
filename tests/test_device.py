"""train.py on the device at hand: the MFU peak looked up by GPU name, autocast on the tensors' device,
activation checkpointing (same gradients, less memory), and no host-device sync between log lines."""

import warnings
from contextlib import nullcontext

import pytest
import torch
from helpers import TINY_MODEL

import adapters
import train
from model import GPT, GPTConfig
from training import device

TINY = [*TINY_MODEL, '--warmup_iters=2', '--final_eval=False']


@pytest.mark.parametrize(
    'name, peak',
    [
        ('NVIDIA H100 80GB HBM3', 989e12),
        ('NVIDIA H100 PCIe', 756e12),
        ('NVIDIA H100 NVL', 835e12),
        ('NVIDIA H200', 989e12),
        ('NVIDIA GH200 480GB', 989e12),
        ('NVIDIA A100-SXM4-80GB', 312e12),
        ('NVIDIA A100 80GB PCIe', 312e12),
        ('NVIDIA A10', 125e12),
        ('NVIDIA A10G', None),  # AWS's variant: not listed, no guess
        ('NVIDIA L4', 121e12),
        ('NVIDIA L40S', 362e12),
        ('NVIDIA L40', 181e12),
        ('NVIDIA GeForce RTX 4090', 165.2e12),
        ('NVIDIA GeForce RTX 3090', 71e12),
        ('NVIDIA GeForce RTX 3090 Ti', None),
        ('Tesla V100-SXM2-32GB', 125e12),
        ('Tesla V100-PCIE-16GB', 112e12),
        ('Tesla T4', 65e12),
        ('NVIDIA Future 9000', None),
    ],
)
def test_gpu_peak_is_looked_up_by_name(name, peak):
    assert device.gpu_peak_flops(name) == peak


def test_peak_for_the_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda dev=None: 'NVIDIA L4')
    assert train.peak_flops_for('cuda:1', 'bfloat16') == 121e12
    assert train.peak_flops_for('cuda', 'float32') is None  # the table holds 16-bit peaks only
    assert train.peak_flops_for('cuda', 'float16', peak_flops=5e12) == 5e12  # the option wins
    assert train.peak_flops_for('cpu', 'bfloat16') is None
    assert train.peak_flops_for('cpu', 'float32', peak_flops=1e11) == 1e11


def test_log_line_shows_mfu_only_against_a_known_peak(tmp_path, capsys):
    args = TINY + ['--max_iters=2', '--eval_interval=2', '--log_interval=1']
    train.main(args + [f'--out_dir={tmp_path / "a"}'])
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith('iter 2:')][0]
    assert 'GFLOP/s' in line and 'mfu' not in line  # a CPU: no peak to divide by
    train.main(args + [f'--out_dir={tmp_path / "b"}', '--peak_flops=1e11'])
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith('iter 2:')][0]
    gflops = float(line.split(' GFLOP/s')[0].split()[-1])
    mfu = float(line.split('mfu ')[1].split('%')[0])
    assert mfu == pytest.approx(gflops, abs=0.11)  # FLOP/s over a peak of 100 GFLOP/s, in %


def test_autocast_runs_on_the_tensors_device():
    with warnings.catch_warnings():  # autocast on a device this machine lacks warns and disables
        warnings.simplefilter('ignore')
        mps = train.autocast_context('mps', 'float16')
        cuda = train.autocast_context('cuda:1', 'bfloat16')
    assert (mps.device, mps.fast_dtype) == ('mps', torch.float16)  # not 'cpu' (nanoGPT's PR #698)
    assert (cuda.device, cuda.fast_dtype) == ('cuda', torch.bfloat16)
    assert train.autocast_context('cpu', 'bfloat16').device == 'cpu'
    assert isinstance(train.autocast_context('mps', 'float32'), nullcontext)


def test_no_autocast_where_torch_has_none_for_the_device(monkeypatch):
    monkeypatch.setattr(
        torch.amp, 'is_autocast_available', lambda device_type: device_type != 'mps'
    )
    assert isinstance(train.autocast_context('mps', 'bfloat16'), nullcontext)


def grads_and_saved_bytes(model, x, y, checkpointing):
    """Parameter gradients of one step, and the bytes the forward keeps for the backward."""
    model.grad_checkpoint, saved = checkpointing, []
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.untyped_storage().nbytes()) or t, lambda t: t
    ):
        loss = model(x, y)[1]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, sum(saved)


@pytest.mark.parametrize('adapter', ['', 'lora', 'nola'])
def test_grad_checkpoint_gives_the_same_gradients_with_less_saved(adapter):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=64, dropout=0.1)
    model = GPT(cfg)
    if adapter:
        model.requires_grad_(False)
        adapters.add_adapters(model, adapter, targets='attn.q,attn.v,mlp.c_fc', dropout=0.1)
    x, y = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))
    plain, plain_bytes = grads_and_saved_bytes(model, x, y, False)
    ckpt, ckpt_bytes = grads_and_saved_bytes(model, x, y, True)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    assert max((plain[n] - ckpt[n]).abs().max().item() for n in plain) < 1e-6
    assert ckpt_bytes < 0.6 * plain_bytes  # only each block's input kept, and the head's


def test_grad_checkpoint_option_trains_the_same(tmp_path):
    args = TINY + ['--max_iters=4', '--eval_interval=4', '--log_interval=2', '--dropout=0.1']
    plain = train.main(args + [f'--out_dir={tmp_path / "a"}'])
    ckpt = train.main(args + [f'--out_dir={tmp_path / "b"}', '--grad_checkpoint=True'])
    assert ckpt['losses'] == pytest.approx(plain['losses'], abs=1e-6)
    assert ckpt['val_loss'] == pytest.approx(plain['val_loss'], abs=1e-6)


class Probe(torch.Tensor):
    """The training loss, marked: every tensor computed from it is a Probe, and reading one's value
    on the host (.item(), .tolist(), float(), bool()) is recorded with the training step it is in."""

    reads, forwards = [], [0]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, '__name__', '') in ('item', 'tolist', '__float__', '__bool__'):
            cls.reads.append(cls.forwards[0])
        return super().__torch_function__(func, types, args, kwargs or {})


def test_the_loss_is_read_on_the_host_only_at_log_lines(tmp_path, monkeypatch):
    real_forward = GPT.forward

    def marked_forward(self, *a, **k):
        logits, loss = real_forward(self, *a, **k)
        if self.training:
            Probe.forwards[0] += 1
            loss = loss.as_subclass(Probe)
        return logits, loss

    monkeypatch.setattr(GPT, 'forward', marked_forward)
    Probe.reads.clear()
    Probe.forwards[0] = 0
    s = train.main(
        TINY + [f'--out_dir={tmp_path}', '--max_iters=12', '--eval_interval=6', '--log_interval=4']
    )
    assert len(s['losses']) == 12
    # read after the forwards of steps 4, 8, 12 (log lines) and at the evaluation after step 6
    assert sorted(set(Probe.reads)) == [4, 6, 8, 12]


def test_a_nan_between_log_lines_is_caught_before_the_checkpoint(tmp_path):
    with pytest.raises(RuntimeError) as e:  # the first step blows the weights up
        train.main(
            TINY
            + [f'--out_dir={tmp_path}', '--learning_rate=1e30', '--warmup_iters=0']
            + ['--max_iters=6', '--eval_interval=3', '--log_interval=100']
        )
    assert str(e.value) == (
        "loss is nan at step 1; stopped, no checkpoint was written; a smaller --learning_rate may help"
    )
    assert not (tmp_path / 'ckpt.pt').exists()
