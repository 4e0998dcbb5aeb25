# LoRA Soups' first step: one LoRA per skill. Skill 2 = 'reverse' (reverse a string of letters), trained
# as skill 1 in config/lora_skill1.py.
#   python train.py config/lora_skill2.py
exec(open('config/lora_skill1.py').read())  # that run; what differs follows
out_dir = 'out/lora_skill2'
dataset = 'skill2'
