# LoRA Soups' first step: one LoRA per skill. Skill 1 = 'shift' (each letter to the next one).
#   python train.py config/lora_skill1.py
init_from = 'out/base/ckpt.pt'
out_dir = 'out/lora_skill1'
dataset = 'skill1'
adapter = 'lora'
adapter_targets = 'attn.q,attn.v'
lora_r = 8
lora_alpha = 16.0
learning_rate = 1e-2     # measured on the default base: 1e-2 reaches a lower val loss than 3e-3 in 150 steps
min_lr = 1e-3
weight_decay = 0.0
max_iters = 150          # the study's budget (study.py)
warmup_iters = 15
eval_interval = 150
