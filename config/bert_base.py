# BERT-base, the recipe of Devlin et al. 2018 (appendix A.2): these are train.py's defaults, spelled
# out. 12 layers x 768 wide, 12 heads, 110M parameters.
#   python prepare.py --dataset wikimedia/wikipedia --config 20231101.en    # -> data/wikipedia
#   torchrun --nproc_per_node=8 train.py config/bert_base.py
# tokens per step: 256 sequences x 512 tokens = 131,072
#   = 32 sequences x 512 tokens x 1 micro-step x 8 GPUs; on 1 GPU the same step is 8 micro-steps
# 1M steps = 131B tokens. (BERT itself ran 90% of the steps at block_size 128 to save time: run with
# --block_size=128 --tokens_per_step=256*128 --run_steps=900000, then resume at 512.)
out_dir = "out-base"
data_dir = "data/wikipedia"
wandb_run_name = "bert-base"

n_layer = 12
n_head = 12
n_embd = 768
block_size = 512
batch_size = 32
tokens_per_step = 256 * 512

learning_rate = 1e-4
max_steps = 1_000_000
warmup_steps = 10_000
weight_decay = 0.01
