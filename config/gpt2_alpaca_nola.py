# NOLA (Koohpayegani et al. 2024) in LoRA's place in config/gpt2_alpaca_lora.py (GPT-2 medium, the same
# schedule) with the NOLA reference settings for GPT-2 M, as config/gpt2_e2e_nola.py, which also shows
# the one-line switch to GPT-2 L's settings.
#   python train.py config/gpt2_alpaca_nola.py
exec(open('config/gpt2_alpaca_lora.py').read())  # that run; what differs follows
out_dir = 'out/gpt2_alpaca_nola'
adapter = 'nola'
nola_alpha = 8.0  # rank 8 (the default): s = alpha / r = 1
nola_k = 512
nola_l = 512
learning_rate = 5e-3  # and no weight decay, no dropout on the NOLA branch
weight_decay = 0.0
