# NOLA (Koohpayegani et al. 2024) on W_q, W_v, GPT-2 small (124M), bf16 on one GPU.
# Data: an Alpaca-format instruction set (a JSON list of {instruction, input, output}) at
# data/alpaca/alpaca_data.json, downloaded from tatsu-lab/stanford_alpaca when there is network.
#   python train.py config/gpt2_alpaca_nola.py
init_from = 'gpt2'       # Hugging Face weights from the download cache, or a local HF directory
tokenizer = 'gpt2'
out_dir = 'out/gpt2_alpaca_nola'
dataset = 'alpaca'       # data.py reads <data_dir>/alpaca/alpaca_data.json
data_dir = 'data'
block_size = 512         # longer items are cropped from the left of the prompt
adapter_targets = 'attn.q,attn.v'
adapter = 'nola'
lora_r = 8               # NOLA's rank for GPT-2
lora_alpha = 32.0
nola_k = 512
nola_l = 512             # the paper's GPT-2 M setting (24 matrices x 1,024 = 24,576 trainable)
nola_seed = 0
nola_stored_basis = False  # regenerate bases in forward/backward (the memory trick)
lora_dropout = 0.05
learning_rate = 5e-3     # the paper's range 5e-3 .. 1e-2
weight_decay = 0.0
batch_size = 8
gradient_accumulation_steps = 2  # 16 items per step
max_iters = 9000         # about 3 epochs of Alpaca's 52k items at 16 per step (our choice)
warmup_iters = 100
label_smoothing = 0.0
decay_lr = True          # cosine to min_lr (the paper decays linearly; train.py offers cosine)
min_lr = 0.0
eval_interval = 1000
eval_iters = 50
log_interval = 100
eval_max_items = 200
device = 'cuda'
dtype = 'bfloat16'
compile = False          # True is faster on a GPU once warmed up
