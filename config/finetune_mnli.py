# MNLI: does the premise entail, contradict or not bear on the hypothesis? 393k training pairs;
# metric: accuracy on validation_matched.
#   torchrun --standalone --nproc_per_node=8 finetune.py config/finetune_mnli.py --init_from=out
# BERT's recipe (Devlin et al. 2018, sec. 4.1): batch 32, 3 epochs, best lr of 2e-5..5e-5.
task = "mnli"
out_dir = "out-mnli"
learning_rate = 2e-5
epochs = 3
log_interval = 500
