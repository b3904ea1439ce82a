# SST-2: movie-review sentence sentiment, 67k training sentences; metric: accuracy.
#   python finetune.py config/finetune_sst2.py --init_from=out   (or --init_from=bert-base-uncased)
# BERT's recipe (Devlin et al. 2018, sec. 4.1): batch 32, 3 epochs, best lr of 2e-5..5e-5.
task = "sst2"
out_dir = "out-sst2"
learning_rate = 2e-5
epochs = 3
