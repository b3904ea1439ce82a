# QQP: do the two Quora questions ask the same thing? 364k training pairs; metric: F1 (accuracy also shown).
#   python finetune.py config/finetune_qqp.py --init_from=out   (or --init_from=bert-base-uncased)
# BERT's recipe (Devlin et al. 2018, sec. 4.1): batch 32, 3 epochs, best lr of 2e-5..5e-5.
task = "qqp"
out_dir = "out-qqp"
learning_rate = 2e-5
epochs = 3
log_interval = 500
