# E2E NLG on this CPU, offline: a small GPT trained from scratch on the shipped devset (90% of its 547
# MRs train, the other 10% validate), name[], near[], eatType[] and food[] delexicalised (chosen on a
# validation split with a food unseen in training: docs/e2e.md, issue 19); then beam search on the 630
# test MRs, its 10 best reranked by a slot check, and the E2E metrics (docs/e2e.md: scores, times):
#   python train.py config/e2e_small.py
#   python sample.py --ckpt=out/e2e_small/ckpt.pt --dataset=e2e --split=test
out_dir = 'out/e2e_small'
dataset = 'e2e'
e2e_train = 'devset'  # the 42k trainset is a download; the devset ships in data/e2e/
# placeholders: a model cannot copy names, nor write the eatType/food values, it never saw; beams
# reranked by the slot check
e2e_delex = 'name,near,eatType,food'
tokenizer = 'world'
block_size = 384  # the longest devset item is 343 world tokens: nothing is cropped
n_layer = 4
n_head = 4
n_embd = 256
dropout = 0.1
batch_size = 32
learning_rate = 1e-3
max_iters = 500
warmup_iters = 30
min_lr = 1e-4
eval_interval = 100
eval_iters = 10
log_interval = 20
eval_split = 'val'  # the held-out devset MRs; sample.py scores the test set
eval_max_items = 0  # all of them
device = 'cpu'
