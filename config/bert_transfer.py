# The transfer experiment (experiments/README.md): BERT-mini's shape (4 layers x 256),
# MLM only, on the kernel-docs corpus, in 30-48 minutes on 2 CPU cores with bf16 in hardware (an EPYC's, an Intel Xeon's).
#   python experiments/transfer.py data
#   python prepare.py --files "data/transfer/corpus/*.txt" --out_dir data/transfer/bins
#   python train.py config/bert_transfer.py
# tokens per step: 32 sequences x 128 tokens x 1 micro-step x 1 process = 4,096
out_dir = "out-transfer"
data_dir = "data/transfer/bins"
wandb_run_name = "bert-transfer"
eval_interval = 500
eval_iters = 20
log_interval = 100

n_layer = 4                   # 2 x 128 for 2,000 steps (10 minutes in float32) reached val MLM 5.7, and fine-tuning gained nothing
n_head = 4
n_embd = 256
max_positions = 128
block_size = 128
batch_size = 32
tokens_per_step = 32 * 128
nsp = False                   # packed text: ~2x the masked tokens of NSP rows of short paragraphs, and NSP
                              # trains only the pooler, which mean pooling does not read
dropout = 0.0                 # a short run underfits: nothing to regularise
init_std = 0.035              # BERT's 0.02 at 768 wide, scaled by 1/sqrt(width): 0.02 keeps a narrow model on the unigram plateau

learning_rate = 1e-3          # 2e-3 stalls at 256 wide (val MLM 7.41 against 6.85 at step 250)
max_steps = 4000              # 16.4M tokens, 1.5 epochs; 0.40-0.54 s a step in bf16 on 2 idle cores with AVX512-BF16
                              # (30 min); 1.75 s in float32 on 2 AVX2-only cores (2 h)
warmup_steps = 200
dtype = "auto"                # bf16 on a CPU with AVX512-BF16 or AMX (~2x float32), else float32
compile = False               # on a short CPU run compiling costs more time than it saves
