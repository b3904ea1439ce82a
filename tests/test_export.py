"""export.py: the exported folder loads into transformers' Auto classes and pipelines and gives what our
scripts give (fill-mask as sample.py, classification as finetune.py, the same token ids), loads back into
model.py bit for bit, and every bad input stops with one message before anything is written."""
import copy
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import export
import sample
import tokenizer as tokenization
from model import BertConfig, BertForPreTraining, BertForSequenceClassification
from runtime import save_checkpoint

transformers = pytest.importorskip("transformers")  # test-only: the reference the export is loaded into

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(max_positions=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def gpt2():
    return tokenization.get_tokenizer()


def random_biases(model, seed):
    """transformers and we both start biases and LayerNorms at 0 and 1: a bias the export left out or put
    in the wrong place would not show, so give them all random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def write_log(folder, records):
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write('{"step": 21, "loss": 7.')  # a line cut short by a crash


def pretraining_run(folder):
    """A tiny pretraining checkpoint and its log. Its MLM head is as pretraining leaves it: confident
    guesses, and the rows that are never a target (the specials and the padding rows 50261..50303) far
    below the text tokens. sample.py ranks text tokens only and the fill-mask pipeline ranks every row,
    so the two agree exactly when those rows hold no probability; test_pipeline_ranks_every_row shows
    the other case."""
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY))
    random_biases(model, 1)
    with torch.no_grad():
        model.mlm.ln.weight.mul_(25)  # logits spread over ~±15: top-5 probabilities of 0.01..0.5
        model.mlm.bias[tokenization.GPT2Tokenizer.eot:] = -30
    os.makedirs(folder, exist_ok=True)
    save_checkpoint(dict(kind="pretraining", model=model.state_dict(), model_config=asdict(model.config), step=20,
                         best_val_loss=6.0, tokenizer="gpt2",
                         config=dict(data_dir="data/toy", block_size=64, tokens_per_step=1024, nsp=True, mask_prob=0.15)),
                    os.path.join(folder, "ckpt.pt"))
    records = []
    for step in range(0, 21, 10):
        records.append({"step": step, "tokens": step * 1024, "val_loss": 8 - step / 10, "val_mlm_loss": 7.3 - step / 10,
                        "val_mlm_acc": step / 100, "val_nsp_loss": 0.69, "val_nsp_acc": 0.5})
        records.append({"step": step + 1, "tokens": (step + 1) * 1024, "loss": 8.1 - step / 10, "mlm_loss": 7.4,
                        "mlm_acc": 0.01, "nsp_loss": 0.7, "nsp_acc": 0.5, "lr": 1e-3, "ms_per_step": 3.0,
                        "tokens_per_sec": 1e5, "mfu": None})
    write_log(folder, records[:-1])
    return model.eval()


def classifier_run(folder, labels=LABELS, pooling="cls", tokenizer="gpt2", vocab_size=50304):
    torch.manual_seed(2)
    model = BertForSequenceClassification(BertConfig(**TINY, vocab_size=vocab_size),
                                          len(labels) if labels else 1, pooling)
    random_biases(model, 3)
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # scores well apart: a label in the wrong place shows
    os.makedirs(folder, exist_ok=True)
    save_checkpoint(dict(kind="finetuning", model=model.state_dict(), model_config=asdict(model.config),
                         n_labels=model.n_labels, labels=labels, pooling=pooling, task="toy", tokenizer=tokenizer,
                         init_from="out-tiny", metric="accuracy" if labels else "spearman", best_val_metric=0.75,
                         val_metrics={"accuracy": 0.75, "mcc": 0.5} if labels else {"pearson": 0.6, "spearman": 0.7},
                         epoch=2, step=8, config=dict(train_file="train.csv", val_file="val.csv")),
                    os.path.join(folder, "ckpt.pt"))
    metric = "val_accuracy" if labels else "val_spearman"
    write_log(folder, [{"step": 4, "epoch": 1, "loss": 1.1, "lr": 1e-5}, {"step": 4, "epoch": 1, metric: 0.5},
                       {"step": 8, "epoch": 2, "loss": 0.9, "lr": 5e-6}, {"step": 8, "epoch": 2, metric: 0.75},
                       {"step": 12, "epoch": 3, "loss": 0.8, "lr": 0.0}, {"step": 12, "epoch": 3, metric: 0.7}])
    return model.eval()


def run_export(run, out, *flags):
    export.main([f"--init_from={run}", f"--out_dir={out}", *flags])
    return str(out)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(our model, its run folder, the exported folder)"""
    root = tmp_path_factory.mktemp("pretrained")
    model = pretraining_run(root / "run")
    return model, str(root / "run"), run_export(root / "run", root / "hf")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    model = classifier_run(root / "run")
    return model, str(root / "run"), run_export(root / "run", root / "hf")


def quiet_pipeline(task, folder, **kwargs):
    transformers.logging.set_verbosity_error()  # the report of BertForMaskedLM not using the NSP head
    return transformers.pipeline(task, model=folder, device="cpu", **kwargs)


# -----------------------------------------------------------------------------
# Pretraining: fill-mask, logits, the round trip

FILL_TEXTS = ["the [MASK] sat on the mat.", "[MASK] is the capital of France.", "one two [MASK] four [MASK] six",
              "It was a [MASK]\tday.", "Hello,[MASK]!"]


def test_fill_mask_pipeline_gives_sample_py_guesses(pretrained, gpt2):
    model, _, folder = pretrained
    fill = quiet_pipeline("fill-mask", folder)
    rows = sample.encode_texts(gpt2, FILL_TEXTS, model.config.max_positions)
    ours = sample.fill_mask(model, gpt2, rows, top_k=5)
    for text, row, preds in zip(FILL_TEXTS, rows, ours):
        theirs = fill(text, top_k=5)
        theirs = theirs if isinstance(theirs[0], list) else [theirs]  # a list per mask when there are several
        assert len(theirs) == len(preds) == row.count(gpt2.mask)
        for (ids, probs), guesses in zip(preds, theirs):
            assert [g["token"] for g in guesses] == ids, text
            assert [g["token_str"] for g in guesses] == [gpt2.decode([i]) for i in ids]
            assert max(abs(g["score"] - p) for g, p in zip(guesses, probs)) < 1e-4, text
            assert probs[0] > 0.01  # a real probability, not one of 50,000 near-equal ones


def test_pipeline_ranks_every_row(pretrained, gpt2):
    """Documented in the README: where a padding row or a special outranks the text tokens (never after
    pretraining), the pipeline returns it, and sample.py the best text token."""
    model, _, folder = pretrained
    hf = transformers.AutoModelForMaskedLM.from_pretrained(folder)
    model = copy.deepcopy(model)
    with torch.no_grad():
        for bias in (hf.cls.predictions.bias, model.mlm.bias):
            bias[50270] = 100.0
    fill = transformers.pipeline("fill-mask", model=hf, tokenizer=transformers.AutoTokenizer.from_pretrained(folder))
    top = fill("the [MASK] sat", top_k=1)[0]
    assert top["token"] == 50270 and top["score"] > 0.99
    (ids, _), = sample.fill_mask(model, gpt2, sample.encode_texts(gpt2, ["the [MASK] sat"], 64), top_k=1)[0]
    assert gpt2.is_text[ids[0]]


def test_logits_match_ours(pretrained):
    model, _, folder = pretrained
    hf, info = transformers.AutoModelForPreTraining.from_pretrained(folder, output_loading_info=True)
    assert type(hf).__name__ == "BertForPreTraining" and not info["missing_keys"] and not info["unexpected_keys"]
    mlm, info = transformers.AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    assert type(mlm).__name__ == "BertForMaskedLM" and not info["missing_keys"]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tok(["the [MASK] sat on the mat.", "[MASK] is here"], ["and then it slept.", "a second [MASK]"],
                padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0 and batch["token_type_ids"].max() == 1  # padded, with pairs
    with torch.no_grad():
        ref, ref_mlm = hf.eval()(**batch), mlm.eval()(**batch)
        ours_mlm, ours_nsp, _ = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    torch.testing.assert_close(ref.prediction_logits, ours_mlm, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_mlm.logits, ours_mlm, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref.seq_relationship_logits, ours_nsp, atol=1e-5, rtol=0)


def test_round_trip_is_bit_identical(pretrained, classifier):
    for (model, _, folder), cls, kwargs in ((pretrained, BertForPreTraining, {}),
                                            (classifier, BertForSequenceClassification, {"n_labels": 3})):
        back = cls.from_pretrained(folder, verbose=False, **kwargs)
        assert back.config == model.config
        ours, theirs = model.state_dict(), back.state_dict()
        assert ours.keys() == theirs.keys()
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), k


def test_safetensors_file_is_standard(pretrained):
    safetensors = pytest.importorskip("safetensors.torch")
    model, _, folder = pretrained
    weights = safetensors.load_file(os.path.join(folder, "model.safetensors"))
    ref = transformers.BertForPreTraining(transformers.AutoConfig.from_pretrained(folder))
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # saved once, as transformers does
    assert set(weights) == set(ref.state_dict()) - tied
    torch.testing.assert_close(weights["bert.embeddings.word_embeddings.weight"], model.bert.wte.weight, atol=0, rtol=0)


def test_model_card(pretrained, classifier):
    card = open(os.path.join(pretrained[2], "README.md")).read()
    assert "pipeline_tag: fill-mask" in card and "data/toy" in card
    assert "20 steps, 20,480 tokens" in card
    assert "validation at step 20 | loss 6.0000, mlm loss 5.3000, mlm acc 20.0%, nsp loss 0.6900" in card
    card = open(os.path.join(classifier[2], "README.md")).read()
    assert "pipeline_tag: text-classification" in card and "3 classes, negative, neutral, positive" in card
    assert "3 epochs, 12 steps; kept: epoch 2, step 8" in card and "accuracy 0.7500, mcc 0.5000" in card


# -----------------------------------------------------------------------------
# Fine-tuned: text classification and regression

def our_scores(model, tok, texts, pairs=None):
    """finetune.py's inputs: [CLS] A [SEP] (B [SEP]), token type 1 from B on; one row at a time."""
    out = []
    for i, text in enumerate(texts):
        a = [tok.cls] + tok.encode(text) + [tok.sep]
        b = tok.encode(pairs[i]) + [tok.sep] if pairs else []
        with torch.no_grad():
            logits, _ = model(torch.tensor([a + b]), torch.tensor([[0] * len(a) + [1] * len(b)]))
        out.append(logits[0])
    return torch.stack(out)


CLASSIFY = ["a fine film", "terrible. just terrible!", "it was [MASK] okay", "ok [CLS] fine", "   spaced   out  "]


def test_text_classification_pipeline_gives_our_scores(classifier, gpt2):
    model, _, folder = classifier
    classify = quiet_pipeline("text-classification", folder, top_k=None)
    probs = our_scores(model, gpt2, CLASSIFY).softmax(-1)
    pairs = ["second text", "and [SEP] more"]
    theirs = classify(CLASSIFY) + classify([{"text": a, "text_pair": b} for a, b in zip(CLASSIFY[:2], pairs)])
    probs = torch.cat([our_scores(model, gpt2, CLASSIFY), our_scores(model, gpt2, CLASSIFY[:2], pairs)]).softmax(-1)
    assert probs.max() - probs.min() > 0.5  # far from uniform
    for p, t in zip(probs, theirs):
        assert {d["label"]: d["score"] for d in t} == pytest.approx(dict(zip(LABELS, p.tolist())), abs=1e-5)
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["architectures"] == ["BertForSequenceClassification"] and config["id2label"]["2"] == "positive"


def test_regression_head(tmp_path, gpt2):
    model = classifier_run(tmp_path / "run", labels=None)
    export.main([f"--init_from={tmp_path / 'run'}"])  # out_dir: <init_from>-hf
    folder = str(tmp_path / "run-hf")
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    theirs = quiet_pipeline("text-classification", folder)(CLASSIFY[:3])
    ours = our_scores(model, gpt2, CLASSIFY[:3])[:, 0]
    assert [d["score"] for d in theirs] == pytest.approx(ours.tolist(), abs=1e-5)  # the number itself, no sigmoid
    assert ours.abs().max() > 1  # which a sigmoid could not give
    back = BertForSequenceClassification.from_pretrained(folder, n_labels=1, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


@pytest.mark.slow
def test_finetune_py_predictions_survive_the_export(pretrained, tmp_path):
    """finetune.py for real (a few steps on the tiny pretraining checkpoint), then the pipeline on the
    exported folder predicts the test rows as finetune.py's predictions.tsv does."""
    _, run, _ = pretrained
    rng = random.Random(0)
    words = "good bad fine awful great poor nice dull".split()
    rows = [(" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))), rng.choice(["no", "yes"])) for _ in range(40)]
    for name, part in (("train", rows[:24]), ("val", rows[24:32]), ("test", rows[32:])):
        with open(tmp_path / f"{name}.csv", "w") as f:
            f.write("text,label\n" + "".join(f"{t},{y}\n" for t, y in part))
    out = tmp_path / "ft"
    cmd = [sys.executable, "finetune.py", f"--init_from={run}", f"--out_dir={out}", "--task=toy", "--pooling=cls",
           *(f"--{s}_file={tmp_path / s}.csv" for s in ("train", "val", "test")), "--examples_per_step=8",
           "--block_size=64", "--epochs=2", "--learning_rate=1e-3", "--compile=False", "--device=cpu", "--dtype=float32"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    folder = run_export(out, tmp_path / "hf")
    predicted = [line.split("\t")[1] for line in open(out / "predictions.tsv").read().splitlines()[1:]]
    theirs = quiet_pipeline("text-classification", folder)([t for t, _ in rows[32:]])
    assert [d["label"] for d in theirs] == predicted


# -----------------------------------------------------------------------------
# The tokenizer

def varied_texts(n=300, seed=0):
    fixed = ["", " ", "  ", "\t", "\n\n", "hello world", " leading space", "trailing space ", "tabs\tand\nnewlines\r\n",
             "a  b   c    d", "It's I'm we'll they've he'd", "numbers 1234567 3.14159 1,000,000", "CamelCase snake_case",
             "naïve café résumé", "Ünïcödé ß ø å", "日本語のテキスト", "中文文本，标点。", "한국어 텍스트", "русский текст",
             "العربية", "हिन्दी", "emoji 🙂👍🏽👨‍👩‍👧 🇫🇷", "zero\u200bwidth", "nbsp\u00a0here", "combining e\u0301",
             "<html><body>x</body></html>", "def f(x):\n    return x ** 2\n", "$€£¥ 100%", "—–-…“”‘’", "\x00\x01 ctl"]
    pool = list("abcXYZ 019.,;'!?\t\n-_()[]") + ["é", "中", "🙂", "\u0301", "\u00a0", "  ", "'s", "the", " the"]
    rng = random.Random(seed)
    return fixed + ["".join(rng.choice(pool) for _ in range(rng.randint(1, 30))) for _ in range(n - len(fixed))]


MASKED = ["the [MASK] sat", "[MASK] at the start", "after a tab\t[MASK]", "after a newline\n[MASK]", "two  [MASK] spaces",
          "[MASK][MASK] [MASK]", "glued[MASK]word", "end [MASK]", " [MASK]", "[MASK", "MASK] [mask]"]


def test_tokenizer_encodes_as_ours(pretrained, classifier, gpt2):
    fill = transformers.AutoTokenizer.from_pretrained(pretrained[2])
    clf = transformers.AutoTokenizer.from_pretrained(classifier[2])
    texts = varied_texts()
    for text in texts + MASKED:  # the pretraining export: sample.py's encode_masked
        assert fill(text)["input_ids"] == [gpt2.cls] + gpt2.encode_masked(text) + [gpt2.sep], repr(text)
    specials = ["a [CLS] b", "[SEP]", "x<|endoftext|>y", "[PAD] pad"]
    for text in texts + MASKED + specials:  # the classifier export: finetune.py's encode (all specials are text)
        assert clf(text)["input_ids"] == [gpt2.cls] + gpt2.encode(text) + [gpt2.sep], repr(text)
    for a, b in zip(texts[:100], texts[100:200]):  # pairs and token types
        ea, eb = gpt2.encode(a), gpt2.encode(b)
        e = clf(a, b)
        assert e["input_ids"] == [gpt2.cls] + ea + [gpt2.sep] + eb + [gpt2.sep]
        assert e["token_type_ids"] == [0] * (len(ea) + 2) + [1] * (len(eb) + 1)
    assert len(fill) == 50261 and fill.mask_token_id == gpt2.mask and fill.pad_token_id == gpt2.pad
    ids = fill("the [MASK] sat")["input_ids"]
    assert fill.decode(ids) == gpt2.decode(ids) == "[CLS]the[MASK] sat[SEP]"


def test_tokenizer_specials_in_pretraining_text(pretrained, gpt2):
    """Our choice where transformers' rules differ from ours: in the pretraining export a [CLS], [SEP], [PAD]
    or <|endoftext|> written in the text is that token (transformers' rule for special tokens; sample.py
    reads it as text). split_special_tokens=True gives ours, with [MASK] as text too."""
    tok = transformers.AutoTokenizer.from_pretrained(pretrained[2])
    assert tok("a [SEP] b")["input_ids"] == [gpt2.cls] + gpt2.encode("a ") + [gpt2.sep] + gpt2.encode(" b") + [gpt2.sep]
    assert tok("a [SEP] b", split_special_tokens=True)["input_ids"] == [gpt2.cls] + gpt2.encode("a [SEP] b") + [gpt2.sep]


def test_wordpiece_checkpoint_keeps_its_vocabulary(tmp_path):
    pytest.importorskip("tokenizers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "the", "cat", "sat", "##s",
             "##ed", "on", "mat", ".", ",", "!"]
    run = tmp_path / "run"
    model = classifier_run(run, labels=["0", "1"], tokenizer="wordpiece", vocab_size=len(vocab))
    (run / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (run / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    folder = run_export(run, tmp_path / "hf")
    assert not os.path.exists(os.path.join(folder, "tokenizer.json"))
    assert open(os.path.join(folder, "vocab.txt")).read() == (run / "vocab.txt").read_text()
    ours = tokenization.get_tokenizer(str(run))
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for text in ["The cats sat on the mat.", "THE CAT, SATED!", "the [MASK] sat", "unknown wörds ok"]:
        assert theirs(text)["input_ids"] == [ours.cls] + ours.encode(text) + [ours.sep], text
    assert json.load(open(os.path.join(folder, "config.json")))["pad_token_id"] == 0
    scores = quiet_pipeline("text-classification", folder, top_k=None)(["the cat sat"])[0]
    with torch.no_grad():
        p = model(torch.tensor([[ours.cls] + ours.encode("the cat sat") + [ours.sep]]))[0].softmax(-1)[0]
    assert {d["label"]: d["score"] for d in scores} == pytest.approx({"0": p[0].item(), "1": p[1].item()}, abs=1e-5)


# -----------------------------------------------------------------------------
# Bad input: one message each, nothing written

def export_error(*argv):
    with pytest.raises(SystemExit) as e:
        export.main(list(argv))
    return str(e.value)


def test_missing_and_damaged_checkpoints(tmp_path):
    assert "no checkpoint at" in export_error(f"--init_from={tmp_path / 'nothing'}", f"--out_dir={tmp_path / 'hf'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt.pt").write_bytes(b"not a checkpoint at all")
    assert "unreadable" in export_error(f"--init_from={tmp_path / 'bad'}", f"--out_dir={tmp_path / 'hf'}")
    assert not os.path.exists(tmp_path / "hf")


def test_checkpoint_problems(tmp_path, pretrained):
    run = tmp_path / "mean"
    classifier_run(run, pooling="mean")
    os.remove(run / "log.jsonl")
    msg = export_error(f"--init_from={run}", f"--out_dir={tmp_path / 'hf'}")
    assert "2 problems" in msg and "pooling='mean'" in msg and "no HuggingFace class" in msg and "no log.jsonl" in msg
    assert "does not fit" in export_error("--init_from=" + str(stale_config_run(tmp_path, pretrained[1])),
                                          f"--out_dir={tmp_path / 'hf'}")
    assert "the run folder itself" in export_error(f"--init_from={pretrained[1]}", f"--out_dir={pretrained[1]}")
    assert not os.path.exists(tmp_path / "hf")


def resave(src, dst, edit):
    """src's checkpoint, changed by edit(ckpt), saved with its log in dst."""
    ckpt = torch.load(os.path.join(src, "ckpt.pt"), weights_only=True)
    edit(ckpt)
    del ckpt["checksum"]
    os.makedirs(dst, exist_ok=True)
    save_checkpoint(ckpt, os.path.join(dst, "ckpt.pt"))
    if src != dst:
        shutil.copy(os.path.join(src, "log.jsonl"), dst)
    return dst


def stale_config_run(tmp_path, run):
    """A checkpoint whose model_config is from an older model.py (block_size, since renamed)."""
    def rename(ckpt):
        ckpt["model_config"]["block_size"] = ckpt["model_config"].pop("max_positions")
    return resave(run, tmp_path / "old", rename)


def test_out_dir_is_refused_unless_overwrite(tmp_path, pretrained, classifier):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "already holds notes.txt" in export_error(f"--init_from={pretrained[1]}", f"--out_dir={out}")
    assert os.listdir(out) == ["notes.txt"]
    run_export(pretrained[1], out, "--overwrite=True")
    # a WordPiece export over a GPT-2 one leaves no tokenizer.json behind for AutoTokenizer to pick up
    run = tmp_path / "wp"
    classifier_run(run, labels=["0", "1"], tokenizer="wordpiece", vocab_size=8)
    (run / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]) + "\n")
    (run / "tokenizer_config.json").write_text("{}")
    run_export(run, out, "--overwrite=True")
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "notes.txt",
                                       "tokenizer_config.json", "vocab.txt"]


def test_messages_have_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "export.py", f"--init_from={tmp_path}", f"--out_dir={tmp_path / 'hf'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "no checkpoint at" in r.stderr
    assert "unknown setting 'init_form'" in export_error("--init_form=out")


def test_pipeline_with_truncation_classifies_texts_longer_than_the_model(classifier, gpt2):
    """transformers does not truncate by default, and the tokenizer's files cannot change that (it resets
    the backend's truncation on every call): the model card says truncation=True, which cuts as finetune.py
    does, the longer text of a pair first."""
    import finetune
    model, _, folder = classifier
    long, short = "a very long review, " * 60, "short"
    assert "truncation=True" in open(os.path.join(folder, "README.md")).read()
    classify = quiet_pipeline("text-classification", folder, top_k=None, truncation=True)
    theirs = [classify(long), classify({"text": short, "text_pair": long}), classify({"text": long, "text_pair": short})]
    for (texts, pairs), t in zip((([long], None), ([short], [long]), ([long], [short])), theirs):
        ids, starts, n_cut = finetune.encode(gpt2, texts, pairs, model.config.max_positions)
        assert n_cut == 1 and len(ids[0]) == model.config.max_positions
        types = [0] * starts[0] + [1] * (len(ids[0]) - starts[0])
        with torch.no_grad():
            probs = model(torch.tensor(ids), torch.tensor([types]))[0][0].softmax(-1)
        t = t[0] if isinstance(t[0], list) else t  # a pair comes back in a list of its own
        assert {d["label"]: d["score"] for d in t} == pytest.approx(dict(zip(LABELS, probs.tolist())), abs=1e-5)


def test_finetune_starts_from_an_exported_folder(pretrained, tmp_path):
    """Our export, like many HuggingFace BERT folders, has a tokenizer.json and no vocab.txt."""
    import finetune
    _, _, folder = pretrained
    rng = random.Random(0)
    rows = [(" ".join(rng.choice("good fine bad awful".split()) for _ in range(4)), rng.choice("ab")) for _ in range(48)]
    for name, part in (("train", rows[:32]), ("val", rows[32:])):
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in part))
    out = tmp_path / "ft"
    finetune.main([f"--init_from={folder}", f"--out_dir={out}", f"--train_file={tmp_path / 'train.csv'}",
                   f"--val_file={tmp_path / 'val.csv'}", "--epochs=1", "--examples_per_step=16", "--block_size=32",
                   "--device=cpu"])
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["tokenizer"] == "tokenizer.json" and (out / "tokenizer.json").is_file()  # out_dir is self-contained
    ours = tokenization.GPT2Tokenizer()
    theirs = tokenization.get_tokenizer(str(out))
    for text in ("a fine film", "naïve café 日本語", "tabs\tand\nnewlines"):
        assert theirs.encode(text) == ours.encode(text)
    assert (theirs.cls, theirs.sep, theirs.pad) == (ours.cls, ours.sep, ours.pad)
    finetune.main(["--eval_only=True", f"--init_from={out}", f"--val_file={tmp_path / 'val.csv'}", "--device=cpu"])
