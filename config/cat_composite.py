# CAT (LoRA Soups, Prabhakar et al. 2024): freeze the two skill LoRAs (config/lora_skill1.py and
# config/lora_skill2.py, trained first) and learn one weight per skill per adapted matrix on the small
# composite split (shift each letter by one, then reverse; 5% of the skills' data): 48 numbers train
# on the default base (2 skills x 24 adapted matrices).
#   python train.py config/lora_skill1.py && python train.py config/lora_skill2.py
#   python train.py config/cat_composite.py
init_from = 'out/base/ckpt.pt'
out_dir = 'out/cat_composite'
dataset = 'composite'  # trains on the composite split; evaluates skill1, skill2 and the composite
adapter = 'cat'
adapter_targets = 'attn.q,attn.k,attn.v,attn.c_proj,mlp.c_fc,mlp.c_proj'  # those of the skill LoRAs
cat_adapters = 'out/lora_skill1/ckpt.pt,out/lora_skill2/ckpt.pt'
cat_weights = 'plain'  # start at 1 (sum of the skills); 'softmax' as the LoRA Soups code
learning_rate = 1e-2
min_lr = 1e-3
weight_decay = 0.0
max_iters = 60
warmup_iters = 6
eval_interval = 60
