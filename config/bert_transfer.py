# The transfer experiment (experiments/README.md): 2 layers x 128, MLM only, on the kernel-docs corpus
# with its own 8,192-id vocabulary, in 30 minutes on 2 CPU cores (float32, AVX2 only).
#   python experiments/transfer.py data
#   python prepare.py --files "data/transfer/corpus/*.txt" --vocab_size=8192 --out_dir data/transfer/bins-8k
#   python train.py config/bert_transfer.py
# tokens per step: 32 sequences x 128 tokens x 1 micro-step x 1 process = 4,096
out_dir = "out-transfer"
data_dir = "data/transfer/bins-8k"  # GPT-2's 50,304-row table made each step 2.4x slower: 8,000 steps took 68 minutes
wandb_run_name = "bert-transfer"
eval_interval = 2500
eval_iters = 20
log_interval = 100

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
init_std = 0.05               # BERT's 0.02 is for 768 wide: at 128 it stays longer on the unigram plateau

learning_rate = 2e-3          # a small model takes a larger step than BERT-base's 1e-4
max_steps = 11500             # 47M tokens, 4.3 epochs; 150 ms a step in float32 on 2 idle AVX2 cores (29 min 49 s with evaluations)
warmup_steps = 100
dtype = "auto"                # bf16 on a CPU with AVX512-BF16 or AMX, else float32
compile = False               # on a short CPU run compiling costs more time than it saves
