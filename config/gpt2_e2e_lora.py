# LoRA (Hu et al. 2021) on W_q, W_v of GPT-2 medium over E2E NLG with the LoRA paper's recipe
# (microsoft/LoRA examples/NLG), bf16 on one GPU; docs/e2e.md lists what still differs and why.
# Data: data/e2e/ ships the devset and test set; trainset.csv (42,061 rows) is downloaded there.
#   python train.py config/gpt2_e2e_lora.py
#   python sample.py --ckpt=out/gpt2_e2e_lora/ckpt.pt --dataset=e2e --split=test   # beam 10, scores
#   python train.py config/gpt2_e2e_lora.py --init_from=gpt2-large --out_dir=out/gpt2l_e2e_lora
init_from = 'gpt2-medium'  # Hugging Face weights from the download cache, or a local HF directory
tokenizer = 'gpt2'
out_dir = 'out/gpt2_e2e_lora'
dataset = 'e2e'
e2e_train = 'trainset'  # trainset.csv trains, devset.csv validates, testset_w_refs.csv is scored
e2e_delex = ''  # GPT-2 copies names: no placeholders
block_size = 512  # the reference's seq_len
adapter = 'lora'
lora_r = 4
lora_alpha = 32.0  # s = alpha / r = 8
lora_dropout = 0.1
learning_rate = 2e-4
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 0.0  # no clipping
label_smoothing = 0.1
batch_size = 8
epochs = 5.0  # 5 passes over the 42,061 rows at batch 8: max_iters = 26,289
warmup_iters = 500
lr_schedule = 'linear'  # linear decay after warmup ...
min_lr = 0.0  # ... to 0 at the last step
eval_interval = 2000
eval_iters = 50
log_interval = 100
eval_split = 'test'  # the final evaluation: the 630 test MRs, beam search, BLEU/NIST/ROUGE-L/CIDEr
eval_max_items = 0  # all of them
device = 'cuda'
dtype = 'bfloat16'  # on a GPU without bf16: --dtype=float16 (trains with a GradScaler)
