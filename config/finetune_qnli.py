# QNLI: does the sentence answer the question? 105k training pairs; metric: accuracy.
#   python finetune.py config/finetune_qnli.py --init_from=out   (or --init_from=bert-base-uncased)
# BERT's recipe (Devlin et al. 2018, sec. 4.1): batch 32, 3 epochs, best lr of 2e-5..5e-5.
task = "qnli"
out_dir = "out-qnli"
learning_rate = 2e-5
epochs = 3
log_interval = 200
