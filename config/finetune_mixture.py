# Full fine-tuning of the default base (python train.py) on the 12-task mixture: MultiLoRA's
# multi-task setting, and the reference point every adapter is compared with (study.py stage 2).
#   python train.py config/finetune_mixture.py
init_from = 'out/base/ckpt.pt'
out_dir = 'out/finetune_mixture'
dataset = 'mixture'
learning_rate = 3e-4  # every weight moves: a smaller step than the adapters take
min_lr = 3e-5
weight_decay = 0.0  # decay would pull the pretrained weights towards 0, not towards W0
max_iters = 150  # the study's budget (study.py)
warmup_iters = 15
eval_interval = 150
