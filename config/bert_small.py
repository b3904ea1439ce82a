# BERT-small: 4 layers x 512 wide, 8 heads (the "BERT-Small" of Turc et al. 2019, arXiv:1908.08962).
# One GPU in a few hours:  python train.py config/bert_small.py
# tokens per step: 128 sequences x 128 tokens = 16,384; with batch_size 64 on 1 GPU that is
# 2 micro-steps (grad_accum is derived: 16,384 / (64 x 128 x processes))
out_dir = "out-small"
data_dir = "data/tinystories"
wandb_run_name = "bert-small"
eval_interval = 1000
eval_iters = 50
log_interval = 50

n_layer = 4
n_head = 8
n_embd = 512
max_positions = 512
block_size = 128
batch_size = 64
tokens_per_step = 128 * 128

learning_rate = 5e-4
max_steps = 100_000
warmup_steps = 2000
