# MultiLoRA (Wang et al. 2023) in LoRA's place in config/gpt2_e2e_lora.py, the same run otherwise:
# n = 2 modules of rank 2 hold LoRA's rank-4 A/B budget (rank 4 does not split in 3), s = 8 as LoRA's.
#   python train.py config/gpt2_e2e_multilora.py          # --init_from=gpt2 (or gpt2-large) for another size
exec(open('config/gpt2_e2e_lora.py').read())  # that run; what differs follows
out_dir = 'out/gpt2_e2e_multilora'
adapter = 'multilora'
multilora_n = 2
multilora_r = 2
multilora_alpha = 16.0  # s = alpha / r = 8
multilora_dropout = 0.1
