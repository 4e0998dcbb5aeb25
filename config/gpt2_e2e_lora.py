# LoRA (Hu et al. 2021) on W_q, W_v, GPT-2 small (124M), bf16 on one GPU.
# Data: E2E NLG (42k meaning representation -> text pairs); put trainset.csv, devset.csv and
# testset_w_refs.csv from github.com/tuetschek/e2e-dataset in data/e2e/.
#   python train.py config/gpt2_e2e_lora.py
init_from = 'gpt2'       # Hugging Face weights from the download cache, or a local HF directory
tokenizer = 'gpt2'
out_dir = 'out/gpt2_e2e_lora'
dataset = 'e2e'          # data.py reads <data_dir>/e2e/{trainset,devset,testset_w_refs}.csv
data_dir = 'data'
block_size = 512
adapter_targets = 'attn.q,attn.v'
adapter = 'lora'
lora_r = 4
lora_alpha = 32.0       # s = alpha / r = 8
lora_dropout = 0.1
learning_rate = 2e-4
weight_decay = 0.01
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 26000        # 5 epochs of 42,061 items at batch 8 (the LoRA paper's schedule)
warmup_iters = 500
label_smoothing = 0.1
decay_lr = True          # cosine to min_lr (the paper decays linearly; train.py offers cosine)
min_lr = 0.0
eval_interval = 1000
eval_iters = 50
log_interval = 100
eval_max_items = 200
device = 'cuda'
dtype = 'bfloat16'
compile = False          # True is faster on a GPU once warmed up
