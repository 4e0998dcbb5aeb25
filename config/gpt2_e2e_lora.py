# LoRA (Hu et al. 2021) on W_q, W_v of GPT-2 medium over E2E NLG: the LoRA paper's settings, bf16 on one GPU.
# Data: trainset.csv, devset.csv and testset_w_refs.csv of github.com/tuetschek/e2e-dataset in data/e2e/.
#   python train.py config/gpt2_e2e_lora.py
#   python train.py config/gpt2_e2e_lora.py --init_from=gpt2-large --out_dir=out/gpt2l_e2e_lora   # another size
init_from = 'gpt2-medium'  # Hugging Face weights from the download cache, or a local HF directory
tokenizer = 'gpt2'
out_dir = 'out/gpt2_e2e_lora'
dataset = 'e2e'  # data.py reads <data_dir>/e2e/{trainset,devset,testset_w_refs}.csv
block_size = 512
adapter = 'lora'
lora_r = 4
lora_alpha = 32.0  # s = alpha / r = 8
lora_dropout = 0.1
learning_rate = 2e-4
weight_decay = 0.01
batch_size = 8
max_iters = 26000  # 5 epochs of 42,061 items at batch 8
warmup_iters = 500
label_smoothing = 0.1
min_lr = 0.0  # cosine decay to 0 (the paper decays linearly)
eval_interval = 1000
eval_iters = 50
log_interval = 100
device = 'cuda'
dtype = 'bfloat16'  # on a GPU without bf16: --dtype=float16 (trains with a GradScaler)
