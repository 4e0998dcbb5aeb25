# MultiLoRA (Wang et al. 2023): n = 3 parallel LoRAs of rank R/3 = 4 with learnable gates (init 0),
# the same A/B parameter budget as config/lora_mixture.py's rank 12 (+ 3 gates per matrix).
#   python train.py config/multilora_mixture.py
init_from = 'out/base/ckpt.pt'
out_dir = 'out/multilora_mixture'
dataset = 'mixture'
adapter = 'multilora'
adapter_targets = 'attn.q,attn.v'
multilora_n = 3
multilora_gate = 'scalar'  # one gate per module, as the paper's figure (our choice); 'channel' per output
lora_r = 4               # per module
lora_alpha = 8.0         # s = alpha / r = 2, as LoRA's
lora_dropout = 0.0
learning_rate = 1e-2     # measured on the default base: 1e-2 reaches a lower val loss than 3e-3 in 150 steps
min_lr = 1e-3
weight_decay = 0.0
max_iters = 150          # the study's budget (study.py)
warmup_iters = 15
eval_interval = 150
