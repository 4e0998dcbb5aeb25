# LoRA (Hu et al. 2021) on W_q, W_v of GPT-2 medium over an Alpaca-format instruction set, bf16 on one GPU.
# Data: a JSON list of {instruction, input, output} at data/alpaca/alpaca_data.json (tatsu-lab/stanford_alpaca).
#   python train.py config/gpt2_alpaca_lora.py
#   python train.py config/gpt2_alpaca_lora.py --init_from=gpt2 --out_dir=out/gpt2s_alpaca_lora   # GPT-2 small
init_from = 'gpt2-medium'  # Hugging Face weights from the download cache, or a local HF directory
tokenizer = 'gpt2'
out_dir = 'out/gpt2_alpaca_lora'
dataset = 'alpaca'  # data.py reads <data_dir>/alpaca/alpaca_data.json
block_size = 512  # longer items are cropped from the left of the prompt
adapter = 'lora'
lora_r = 12
lora_alpha = 24.0  # s = 2
lora_dropout = 0.05
learning_rate = 2e-4
weight_decay = 0.01
batch_size = 8
gradient_accumulation_steps = 2  # 16 items per step
max_iters = 9000  # about 3 epochs of Alpaca's 52k items at 16 per step (our choice)
warmup_iters = 100
min_lr = 0.0
eval_interval = 1000
eval_iters = 50
log_interval = 100
device = 'cuda'
dtype = 'bfloat16'  # on a GPU without bf16: --dtype=float16 (trains with a GradScaler)
