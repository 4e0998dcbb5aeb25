# NOLA (Koohpayegani et al. 2024) in LoRA's place in config/gpt2_e2e_lora.py (GPT-2 medium, E2E NLG, the
# same recipe: AdamW beta2 0.999, no clipping, label smoothing 0.1, 5 epochs, 500 warmup steps, linear
# decay, batch 8) with the settings of UCDvision/NOLA gpt/examples/NLG/scripts for GPT-2 M: rank 8,
# k = l = 512, alpha 8 (s = 1), lr 5e-3, no weight decay: 48 matrices x 1,024 = 49,152 trainable numbers.
# GPT-2 L (finetune_gpt2l_e2e_qv_nola.sh): k = l = 256, alpha 2 (s = 0.25), lr 1e-2, batch 4 with 4
# accumulation steps: 72 x 512 = 36,864 numbers. Its scheduler steps once per micro-batch, so its 500
# warmup steps are 125 optimizer steps here (train.py counts optimizer steps):
#   python train.py config/gpt2_e2e_nola.py
#   python train.py config/gpt2_e2e_nola.py --init_from=gpt2-large --nola_k=256 --nola_l=256 \
#       --nola_alpha=2.0 --learning_rate=1e-2 --batch_size=4 --gradient_accumulation_steps=4 \
#       --warmup_iters=125 --out_dir=out/gpt2l_e2e_nola
#   python sample.py --ckpt=out/gpt2_e2e_nola/ckpt.pt --dataset=e2e --split=test
exec(open('config/gpt2_e2e_lora.py').read())  # that run; what differs follows
out_dir = 'out/gpt2_e2e_nola'
adapter = 'nola'
nola_r = 8
nola_alpha = 8.0  # s = alpha / r = 1
nola_k = 512
nola_l = 512
learning_rate = 5e-3
weight_decay = 0.0
