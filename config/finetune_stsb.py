# STS-B: how similar are the two sentences, 0 to 5? 5.7k training pairs; regression (one output, MSE);
# metric: Spearman correlation, as BERT reports it (Pearson also shown).
#   python finetune.py config/finetune_stsb.py --init_from=out   (or --init_from=bert-base-uncased)
# BERT's recipe (Devlin et al. 2018, sec. 4.1): batch 32, 3 epochs, best lr of 2e-5..5e-5. The small
# GLUE sets vary from seed to seed; try a few seeds and learning rates.
task = "stsb"
out_dir = "out-stsb"
learning_rate = 2e-5
epochs = 3
