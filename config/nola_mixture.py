# NOLA (Koohpayegani et al. 2024): A and B of rank 8 as mixtures of k and l frozen random bases;
# only the k + l coefficients per matrix train: 8 matrices x 256 = 2,048 numbers, half of LoRA rank 1's 4,096.
#   python train.py config/nola_mixture.py
init_from = 'out/base/ckpt.pt'
out_dir = 'out/nola_mixture'
dataset = 'mixture'
adapter = 'nola'
adapter_targets = 'attn.q,attn.v'
nola_r = 8  # NOLA's rank (the paper's GPT-2 setting)
nola_alpha = 16.0
nola_k = 128
nola_l = 128
nola_seed = 0
nola_stored_basis = (
    False  # regenerate bases from the seed in forward/backward (the reference code's memory trick)
)
learning_rate = 1e-2  # the paper's range 5e-3 .. 1e-2, no weight decay
min_lr = 1e-3
weight_decay = 0.0
max_iters = 150  # the study's budget (study.py)
warmup_iters = 15
eval_interval = 150
