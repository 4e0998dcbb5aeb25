"""
The device a run computes on: its dtype, its autocast, the peak FLOP/s that MFU divides by, and
several processes under torchrun (DistributedDataParallel over the trainable parameters only).
"""

import os
import re
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def pick_device_dtype(c):
    """The device and the dtype name ('float32', 'bfloat16' or 'float16') the run computes in."""
    dev = c.device if c.device != 'auto' else 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(
            f"device={dev!r} but torch sees no CUDA GPU here: pass --device=cpu (or auto)"
        )
    dtype = c.dtype
    if dtype == 'auto':
        if dev.startswith('cuda'):
            dtype = 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        else:  # bf16 autocast pays only where the CPU has bf16 instructions (README: 0.65x the fp32 step time)
            flags = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
            dtype = 'bfloat16' if ('avx512_bf16' in flags or 'amx_bf16' in flags) else 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f"unknown dtype {dtype!r}: choose auto, float32, bfloat16 or float16")
    if dtype == 'bfloat16' and dev.startswith('cuda') and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "this GPU has no bf16: pass --dtype=float16 (or auto), which trains with a GradScaler"
        )
    return dev, dtype


# dense (no sparsity) bf16/fp16 tensor-core peak of one GPU in FLOP/s, from NVIDIA's data sheets: what
# the MFU column divides by. Searched in order in torch.cuda.get_device_name(), lower-cased. GeForce
# cards at their rate with fp32 accumulation (what autocast's matmuls use; half their fp16-accumulate
# peak); V100 and T4 have no bf16: their fp16 peak. The A10G (AWS) is left out: its clocks differ.
GPU_PEAK_FLOPS = (
    (r'\bh100\b.*\bnvl\b', 835e12),
    (r'\bh100\b.*\bpcie\b', 756e12),
    (r'\bh100\b', 989e12),  # SXM
    (r'\bh200\b.*\bnvl\b', 835e12),
    (r'\bg?h200\b', 989e12),  # H200 SXM, GH200
    (r'\ba100\b', 312e12),
    (r'\ba30\b', 165e12),
    (r'\ba40\b', 149.7e12),
    (r'\ba10\b', 125e12),
    (r'\bl40s\b', 362e12),
    (r'\bl40\b', 181e12),
    (r'\bl4\b', 121e12),
    (r'\brtx 4090\b', 165.2e12),
    (r'\brtx 3090\b(?! ti)', 71e12),
    (r'\bv100s\b', 130e12),
    (r'\bv100\b.*\bpcie\b', 112e12),
    (r'\bv100\b', 125e12),
    (r'\bt4\b', 65e12),
)


def gpu_peak_flops(name):
    """A GPU's 16-bit dense peak FLOP/s looked up by its name in GPU_PEAK_FLOPS; None if not listed."""
    name = name.lower()
    return next((peak for pattern, peak in GPU_PEAK_FLOPS if re.search(pattern, name)), None)


def peak_flops_for(dev, dtype, peak_flops=0.0):
    """What MFU divides by: peak_flops when given; else a listed GPU's peak in a bf16/fp16 run; else
    None (a CPU, an unknown GPU, float32): the log then shows FLOP/s without a percentage."""
    if peak_flops:
        return peak_flops
    if not dev.startswith('cuda') or dtype == 'float32':
        return None
    return gpu_peak_flops(torch.cuda.get_device_name(dev))


def autocast_context(dev, dtype):
    """Mixed precision on the device the tensors live on ('cuda:1' -> 'cuda', 'mps', 'cpu'); none for
    float32, nor where this torch has no autocast for that device (mps before torch 2.5 or so)."""
    device_type = dev.split(':')[0]
    available = getattr(torch.amp, 'is_autocast_available', lambda t: t in ('cuda', 'cpu'))
    if dtype == 'float32' or not available(device_type):
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def start_distributed(dev):
    """Under torchrun: join the process group (NCCL between GPUs, gloo between CPU processes) and
    return this process's device, one GPU per process: cuda:LOCAL_RANK."""
    if dev.startswith('cuda'):
        dev = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(dev)
    dist.init_process_group(backend='nccl' if dev.startswith('cuda') else 'gloo')
    return dev


def wrap_ddp(model, dev):
    """DistributedDataParallel over the trainable parameters alone. A frozen base and the adapters'
    fixed buffers are the same in every process by construction (the same file, the same seeds), so
    DDP is told to ignore them: no broadcast of a frozen GPT-2 at the start, and none of it in the
    gradient buckets."""
    fixed = [n for n, p in model.named_parameters() if not p.requires_grad]
    fixed += [n for n, _ in model.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(model, fixed)
    return DDP(model, device_ids=[torch.device(dev)] if dev.startswith('cuda') else None)
