# MultiLoRA (Wang et al. 2023) in LoRA's place in config/gpt2_alpaca_lora.py, the same run otherwise:
# n = 3 modules of rank 4 hold LoRA's rank-12 A/B budget, s = 2 as LoRA's.
#   python train.py config/gpt2_alpaca_multilora.py       # --init_from=gpt2 (or gpt2-large) for another size
exec(open('config/gpt2_alpaca_lora.py').read())  # that run; what differs follows
out_dir = 'out/gpt2_alpaca_multilora'
adapter = 'multilora'
multilora_n = 3
multilora_r = 4
multilora_alpha = 8.0  # s = alpha / r = 2
multilora_dropout = 0.05
