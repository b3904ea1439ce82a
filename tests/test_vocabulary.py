"""A vocabulary of one's own: prepare.py --vocab_size trains a byte-level BPE on the corpus, and every
script works from the data folder and then from the checkpoint alone; prepare.py --tokenizer reuses a
vocabulary, a HuggingFace BERT's among them, whose weights train.py then goes on pretraining."""
import json
import os
import random
import shutil
import sys

import numpy as np
import pytest
import torch

import export
import finetune
import prepare
import runtime
import sample
import tokenizer as tokenization
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a few scripts and the specials written as text: none of it may become a special id or get lost
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "home", "naïve", "café", "Straße", "über", "Größe",
         "日本語", "東京", "Москва", "αβγ", "🙂", "don't", "42"]
TEXTS = ["der Hund läuft über die Straße", "東京は日本の首都です", "Москва — столица", "emoji 🙂🙃 and tabs\tnewlines\n",
         "the [MASK] sat <|endoftext|> on [CLS] the [SEP] mat [PAD]", "\u00a0 odd spaces\u2003here"]
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--max_positions=32", "--block_size=32", "--batch_size=8",
        "--tokens_per_step=256", "--nsp=False", "--dropout=0.0", "--init_std=0.05", "--learning_rate=3e-3",
        "--warmup_steps=5", "--eval_iters=2", "--log_interval=10", "--device=cpu", "--compile=False", "--dtype=float32"]


def write_corpus(folder, n_docs=600, seed=0):
    """Documents of words counting on (each word follows from the one before it), in several scripts."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    docs = []
    for _ in range(n_docs):
        a = rng.randrange(len(WORDS))
        docs.append(" ".join(WORDS[(a + j) % len(WORDS)] for j in range(rng.randint(8, 40))))
    (folder / "corpus.txt").write_text("\n\n".join(docs + TEXTS[:4]) + "\n", encoding="utf-8")
    return str(folder / "corpus.txt")


def run_prepare(tmp_path, out, *flags):
    prepare.main(["--files", str(tmp_path / "text" / "corpus.txt"), "--out_dir", str(tmp_path / out), "--num_proc", "1",
                  "--cache_dir", str(tmp_path / "hf_cache"), "--val_fraction", "0.05", *flags])
    return str(tmp_path / out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(the tmp folder, a data folder with a 600-id trained vocabulary, a 40-step run on it)"""
    tmp = tmp_path_factory.mktemp("vocab")
    write_corpus(tmp / "text")
    data = run_prepare(tmp, "data", "--vocab_size=600")
    out = str(tmp / "out")
    train.main([*TINY, f"--data_dir={data}", f"--out_dir={out}", "--max_steps=40", "--eval_interval=20"])
    return tmp, data, out


def test_trained_vocabulary_bins(trained):
    _, data, _ = trained
    with open(os.path.join(data, "meta.json")) as f:
        meta = json.load(f)
    tok = tokenization.read_json_tokenizer(os.path.join(data, "tokenizer.json"))
    assert meta["tokenizer"] == "tokenizer.json" and meta["vocabulary"] == tok.identity()
    assert meta["n_ids"] == tok.n_ids <= 600 and meta["vocab_size"] == tok.rows and tok.rows % 64 == 0
    # GPT-2's layout: text ids first, then <|endoftext|> [CLS] [SEP] [MASK] [PAD]
    assert list(meta["special_ids"].values()) == list(range(tok.n_ids - 5, tok.n_ids))
    assert np.array_equal(tok.text_ids(), np.arange(tok.n_ids - 5))
    for split in ("train", "val"):
        ids = np.fromfile(os.path.join(data, f"{split}.bin"), np.uint16)
        offs = np.load(os.path.join(data, f"{split}_docs.npy"))
        assert ids.max() < tok.n_ids
        np.testing.assert_array_equal(np.flatnonzero(ids == tok.eot), offs[1:] - 1)  # EOT ends each document only
        assert not np.isin(ids, [tok.cls, tok.sep, tok.mask, tok.pad]).any()


def test_round_trip_and_no_specials_from_text(trained):
    _, data, _ = trained
    tok = tokenization.read_json_tokenizer(os.path.join(data, "tokenizer.json"))
    specials = set(tok.specials().values())
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, "byte-level BPE gives back any text"
        assert not specials & set(ids), f"a special id from plain text: {text!r}"
    ids = tok.encode_masked("the [MASK] sat")  # the mask takes the space before it, as in pretraining
    assert ids.count(tok.mask) == 1 and tok.decode(ids) == "the[MASK] sat"
    assert tok.encode_masked("the [MASK] sat")[2:] == tok.encode(" sat")
    # whole words: " cat" starts one, the pieces after it do not
    starts, _ = tok.word_boundaries()
    for word in ("cat", "Straße", "東京"):
        pieces = tok.encode(" " + word)
        assert starts[pieces[0]] and not starts[pieces[1:]].any()


def test_masking_draws_text_ids_of_the_vocabulary(trained):
    _, data, _ = trained
    tok = tokenization.read_json_tokenizer(os.path.join(data, "tokenizer.json"))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, tok.n_ids - 5, (400, 32))
    idx[:, 0], idx[:, -1] = tok.cls, tok.sep
    inputs, labels = train.mask_tokens(idx, rng, 0.15, 8, tok)
    chosen = labels != -100
    replaced = inputs[chosen & (inputs != idx) & (inputs != tok.mask)]
    assert len(replaced) > 50 and replaced.max() < tok.n_ids - 5, "a random replacement was not one of its text ids"
    assert not chosen[:, [0, -1]].any()


def test_every_script_works_from_the_checkpoint_alone(trained, tmp_path):
    tmp, data, out = trained
    ckpt = runtime.load_checkpoint(out)
    assert ckpt["tokenizer"] == "tokenizer.json"
    run = tmp_path / "run"  # the run folder on another machine: no data folder beside it
    shutil.copytree(out, run)
    moved = tmp_path / "moved-data"
    shutil.move(data, moved)
    try:
        model, tok = sample.load_model(str(run))
        assert model.config.vocab_size == tok.rows < 1000
        [[(ids, probs)]] = sample.fill_mask(model, tok, sample.encode_texts(tok, ["the cat [MASK] on"], 32), top_k=5)
        assert all(tok.is_text[i] for i in ids) and probs == sorted(probs, reverse=True)

        rows = [(f"{w} {w} dog", "a") for w in WORDS[:10]] + [(f"{w} {w} cat", "b") for w in WORDS[10:]]
        for name in ("train", "val"):
            (tmp_path / f"{name}.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
        ft = tmp_path / "ft"
        finetune.main([f"--init_from={run}", f"--out_dir={ft}", f"--train_file={tmp_path / 'train.csv'}",
                       f"--val_file={tmp_path / 'val.csv'}", "--epochs=1", "--examples_per_step=8", "--block_size=32",
                       "--device=cpu", "--compile=False"])
        assert runtime.load_checkpoint(str(ft))["tokenizer_json"] == ckpt["tokenizer_json"]
        assert export_matches_transformers(run, tmp_path / "hf", model, tok)
        export.main([f"--init_from={ft}", f"--out_dir={tmp_path / 'hf-ft'}"])
        transformers = pytest.importorskip("transformers")
        hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf-ft")
        for text in TEXTS:
            assert hf_tok(text)["input_ids"] == [tok.cls] + tok.encode(text) + [tok.sep], text
        classify = transformers.pipeline("text-classification", model=str(tmp_path / "hf-ft"), device="cpu", top_k=None)
        ft_model, _ = finetune.load_model(str(ft), ["a", "b"], 2, 0.0, 32, need_head=True)
        x = torch.tensor([[tok.cls] + tok.encode("café café dog") + [tok.sep]])
        ours = ft_model.eval()(x)[0].softmax(-1)[0]
        theirs = {r["label"]: r["score"] for r in classify(["café café dog"])[0]}
        assert abs(theirs["a"] - ours[0].item()) < 1e-4 and abs(theirs["b"] - ours[1].item()) < 1e-4
        import bench
        bench.main([f"--init_from={run}", "--steps=1", "--warmup=0", "--device=cpu", "--block_size=32", "--batch_size=4"])
    finally:
        shutil.move(moved, data)


def export_matches_transformers(run, folder, model, tok):
    """The exported fill-mask pipeline gives sample.py's ids and top-5 probabilities."""
    transformers = pytest.importorskip("transformers")
    export.main([f"--init_from={run}", f"--out_dir={folder}"])
    transformers.logging.set_verbosity_error()  # the report of BertForMaskedLM not using the NSP head
    with torch.no_grad():  # every non-text row far below: the pipeline ranks all rows, sample.py text only
        model.mlm.bias[torch.from_numpy(~tok.text_mask(model.config.vocab_size))] = -30
        hf = transformers.AutoModelForMaskedLM.from_pretrained(folder)
        hf.cls.predictions.bias.copy_(model.mlm.bias)
    fill = transformers.pipeline("fill-mask", model=hf, tokenizer=transformers.AutoTokenizer.from_pretrained(folder),
                                 device="cpu")
    for text in ("the cat [MASK] on", "東京 [MASK] Москва", "naïve[MASK] 🙂"):
        (ids, probs), = sample.fill_mask(model, tok, sample.encode_texts(tok, [text], 32), top_k=5)[0]
        theirs = fill(text, top_k=5)
        assert [g["token"] for g in theirs] == ids, text
        assert max(abs(g["score"] - p) for g, p in zip(theirs, probs)) < 1e-4, text
    return True


def test_resume_on_data_of_another_vocabulary_stops(trained, tmp_path):
    tmp, data, out = trained
    other = run_prepare(tmp, "data-gpt2")
    run = tmp_path / "run"
    shutil.copytree(out, run)
    with pytest.raises(SystemExit, match=r"has another vocabulary \(tokenizer.json, \d+ ids\) than .*data-gpt2 was prepared with \(gpt2, 50,261 ids\)"):
        train.main([f"--out_dir={run}", "--init_from=resume", f"--data_dir={other}", "--max_steps=50"])
    # the same vocabulary for a second corpus (--tokenizer) resumes
    same = run_prepare(tmp, "data-same", f"--tokenizer={data}/tokenizer.json")
    train.main([f"--out_dir={run}", "--init_from=resume", f"--data_dir={same}", "--max_steps=50", "--eval_interval=50"])
    assert runtime.load_checkpoint(str(run))["step"] == 50


def test_vocab_size_out_of_range(tmp_path, capsys):
    for n in (100, 70000):
        with pytest.raises(SystemExit) as e:
            prepare.parse_args(["--files", "x.txt", f"--vocab_size={n}"])
        assert e.value.code == 2
        assert "--vocab_size must be in [512, 65,536] (the bins hold uint16 ids)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare.parse_args(["--files", "x.txt", "--vocab_size=1024", "--tokenizer=t.json"])  # one or the other
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare.parse_args(["--files", "x.txt", "--tokenizer="])  # empty: not silently GPT-2's
    assert "--tokenizer is empty" in capsys.readouterr().err


def test_missing_tokenizers_package(tmp_path, monkeypatch):
    write_corpus(tmp_path / "text", n_docs=10)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers raises ImportError
    with pytest.raises(SystemExit, match=r"^training a vocabulary \(--vocab_size\) needs HuggingFace's tokenizers "
                                         r"package: pip install tokenizers$"):
        run_prepare(tmp_path, "data", "--vocab_size=512")
    assert not (tmp_path / "data").exists()


def test_damaged_tokenizer_json(trained, tmp_path):
    _, data, _ = trained
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    text = (broken / "tokenizer.json").read_text()
    (broken / "tokenizer.json").write_text(text[:len(text) // 2])
    with pytest.raises(SystemExit, match=r"tokenizer.json is not a tokenizer that HuggingFace's tokenizers can read"):
        train.main([*TINY, f"--data_dir={broken}", f"--out_dir={tmp_path / 'out'}", "--max_steps=2"])
    with pytest.raises(SystemExit, match=r"tokenizer.json is not a tokenizer .*restore it"):
        run_prepare(tmp_path, "again", f"--tokenizer={broken / 'tokenizer.json'}")
    with pytest.raises(SystemExit, match="no such file or folder"):
        run_prepare(tmp_path, "again", f"--tokenizer={tmp_path / 'nowhere.json'}")


# -----------------------------------------------------------------------------
# Continued pretraining of HuggingFace BERT weights on one's own text

def hf_bert(path):
    """A tiny HuggingFace BERT with its MLM head and a WordPiece vocab.txt that holds the corpus's words."""
    transformers = pytest.importorskip("transformers")  # test-only: writes the reference checkpoint format
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"] + sorted({w.lower() for w in WORDS}) + \
        ["##s", "##e", "'", "t"]
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), max_position_embeddings=64, num_hidden_layers=1,
                                  num_attention_heads=2, hidden_size=32, intermediate_size=64)
    transformers.BertForPreTraining(cfg).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return str(path), len(vocab)


@pytest.mark.slow
def test_continued_pretraining_from_huggingface_weights(tmp_path):
    folder, n_ids = hf_bert(tmp_path / "bert")
    write_corpus(tmp_path / "text")
    gpt2_data = run_prepare(tmp_path, "gpt2-data")
    with pytest.raises(SystemExit, match=r"has another vocabulary \(wordpiece.*--tokenizer="):
        train.main([f"--data_dir={gpt2_data}", f"--out_dir={tmp_path / 'x'}", f"--init_from={folder}", "--device=cpu"])
    data = run_prepare(tmp_path, "data", f"--tokenizer={folder}")
    tok = tokenization.from_data(data, json.load(open(os.path.join(data, "meta.json"))))
    assert tok.name == "wordpiece" and tok.eot == tok.sep and tok.n_ids == n_ids  # documents end with [SEP]
    assert not tok.is_text[[0, 1, 2, 3, 4, 5]].any(), "[PAD] [UNK] [CLS] [SEP] [MASK] [unused0] are never words"
    out = tmp_path / "out"
    flags = [*TINY[4:], f"--data_dir={data}", f"--out_dir={out}", f"--init_from={folder}", "--eval_interval=60",
             "--max_steps=60"]
    train.main(flags)
    evals = [r for r in runtime.read_log(str(out / "log.jsonl")) if "val_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["val_mlm_loss"] < evals[0]["val_mlm_loss"] - 0.5, evals
    ckpt = runtime.load_checkpoint(str(out))
    assert ckpt["tokenizer"] == "wordpiece" and ckpt["config"]["n_embd"] == 32 and ckpt["model_config"]["vocab_size"] == n_ids
    # it started from the HuggingFace weights, not from a fresh init: 60 steps leave it nearer to them
    from model import BertConfig, BertForPreTraining
    start = BertForPreTraining.from_pretrained(folder, verbose=False).state_dict()
    torch.manual_seed(ckpt["config"]["seed"])
    fresh = BertForPreTraining(BertConfig(**ckpt["model_config"])).state_dict()
    for k in ("bert.wte.weight", "bert.h.0.mlp.fc.weight"):
        near = lambda sd: torch.cosine_similarity(ckpt["model"][k].flatten(), sd[k].flatten(), 0)
        assert near(start) > 0.3 and abs(near(fresh)) < 0.1, k
    export.main([f"--init_from={out}", f"--out_dir={tmp_path / 'hf'}"])
    assert (tmp_path / "hf" / "vocab.txt").read_text() == (tmp_path / "bert" / "vocab.txt").read_text()
