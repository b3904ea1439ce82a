# BERT-tiny: 2 layers x 128 wide. Trains on a laptop CPU in a few minutes and visibly learns.
#   python prepare.py --vocab_size=8192    # TinyStories, with a vocabulary trained on it -> data/tinystories-8k
#   python train.py config/bert_tiny.py
# tokens per step: 32 sequences x 128 tokens x 1 micro-step x 1 process = 4,096
out_dir = "out-tiny"
data_dir = "data/tinystories-8k"  # an 8,192-id vocabulary: steps 2.4x as fast as with GPT-2's 50,304 rows
wandb_run_name = "bert-tiny"
eval_interval = 250
eval_iters = 20
log_interval = 25

n_layer = 2
n_head = 2
n_embd = 128
max_positions = 128
block_size = 128
batch_size = 32
tokens_per_step = 32 * 128

nsp = False                   # on short documents NSP rows are half padding and NSP stays at chance
dropout = 0.0                 # no measurable effect in a short run, and ~10% of a CPU step
init_std = 0.05               # BERT's 0.02 is for 768 wide: at 128 it learns context later

learning_rate = 2e-3          # a small model takes a larger step than BERT-base's 1e-4
max_steps = 1000              # 4M tokens; 0.15 s a step in float32 on 2 CPU cores (0.37 s with GPT-2's vocabulary)
warmup_steps = 50
compile = False               # on a short CPU run compiling costs more time than it saves
