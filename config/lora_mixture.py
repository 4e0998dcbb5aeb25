# LoRA (Hu et al. 2021) of rank R = 12 on W_q and W_v of the default base, 12-task mixture.
#   python train.py config/lora_mixture.py            # then: --lora_r=1 for the rank-1 baseline
init_from = 'out/base/ckpt.pt'
out_dir = 'out/lora_mixture'
dataset = 'mixture'
adapter = 'lora'
adapter_targets = 'attn.q,attn.v'
lora_r = 12
lora_alpha = 24.0  # s = alpha / r = 2
lora_dropout = 0.0
learning_rate = (
    1e-2  # measured on the default base: 1e-2 reaches a lower val loss than 3e-3 in 150 steps
)
min_lr = 1e-3
weight_decay = 0.0
max_iters = 150  # the study's budget (study.py)
warmup_iters = 15
eval_interval = 150
