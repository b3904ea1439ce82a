# RTE: does the first sentence entail the second? 2.5k training pairs; metric: accuracy.
#   python finetune.py config/finetune_rte.py --init_from=out   (or --init_from=bert-base-uncased)
# BERT's recipe (Devlin et al. 2018, sec. 4.1): batch 32, 3 epochs, best lr of 2e-5..5e-5. The small
# GLUE sets vary from seed to seed; try a few seeds and learning rates.
task = "rte"
out_dir = "out-rte"
learning_rate = 2e-5
epochs = 3
