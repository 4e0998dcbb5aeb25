# LoRA Soups' first step: one LoRA per skill. Skill 1 = 'shift' (each letter to the next one).
#   python train.py config/lora_skill1.py
init_from = 'out/base/ckpt.pt'
out_dir = 'out/lora_skill1'
dataset = 'skill1'
adapter = 'lora'
# every Linear: q,v alone learn these skills only after ~1000 steps
adapter_targets = 'attn.q,attn.k,attn.v,attn.c_proj,mlp.c_fc,mlp.c_proj'
lora_r = 8
lora_alpha = 16.0
learning_rate = 3e-3  # measured: 3e-3 learns the skills, 1e-2 overshoots (ΔW several times W0)
min_lr = 3e-4
weight_decay = 0.0
max_iters = 300  # the study's budget (study.py)
warmup_iters = 30
eval_interval = 300
