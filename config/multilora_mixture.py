# MultiLoRA (Wang et al. 2023) in LoRA's place in config/lora_mixture.py, the same run otherwise:
# n = 3 parallel LoRAs of rank R/3 = 4 with learnable gates (init 0), the same A/B parameter budget
# as LoRA's rank 12 (+ 3 gates per matrix).
#   python train.py config/multilora_mixture.py
exec(open('config/lora_mixture.py').read())  # that run; what differs follows
out_dir = 'out/multilora_mixture'
adapter = 'multilora'
multilora_n = 3
multilora_gate = (
    'scalar'  # one gate per module, as the paper's figure (our choice); 'channel' per output
)
multilora_r = 4  # per module
multilora_alpha = 8.0  # s = alpha / r = 2, as LoRA's
