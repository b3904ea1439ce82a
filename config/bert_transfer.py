# The transfer experiment of issue 14 (experiments/transfer.py): bert_tiny's shape, MLM only, on the
# kernel-docs corpus, in ~30 minutes on 2 CPU cores.
#   python experiments/transfer.py data
#   python prepare.py --files "data/transfer/corpus/*.txt" --out_dir data/transfer/bins
#   python train.py config/bert_transfer.py
# tokens per step: 32 sequences x 128 tokens x 1 micro-step x 1 process = 4,096
out_dir = "out-transfer"
data_dir = "data/transfer/bins"
wandb_run_name = "bert-transfer"
eval_interval = 500
eval_iters = 20
log_interval = 50

n_layer = 2
n_head = 2
n_embd = 128
max_positions = 128
block_size = 128
batch_size = 32
tokens_per_step = 32 * 128
nsp = False                   # packed text: ~2x the masked tokens of NSP rows of short paragraphs, and NSP
                              # trains only the pooler, which mean pooling does not read
dropout = 0.0                 # a short run underfits: nothing to regularise
init_std = 0.05               # 0.02 (BERT-base, 768 wide) keeps 128 wide on the unigram plateau

learning_rate = 2e-3
max_steps = 2000              # 8.2M tokens, 0.77 epoch; ~0.3 s a step on 2 idle CPU cores (~10 min)
warmup_steps = 100
compile = False               # on a short CPU run compiling costs more time than it saves
