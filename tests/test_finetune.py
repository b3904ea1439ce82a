"""finetune.py: metrics against hand-worked values, data loading and batching, tiny models that must
learn generated tasks, the linear probe, HuggingFace checkpoints, and one clear message per bad input."""
import csv
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

import finetune as ft
import runtime
from model import BertConfig, BertForPreTraining

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(max_positions=64, n_layer=2, n_head=2, n_embd=32, ffn=64, dropout=0.0)  # GPT-2 vocabulary (50304)
FAST = ["--compile=False", "--dropout=0.0", "--learning_rate=3e-3", "--examples_per_step=32", "--block_size=64",
        "--log_interval=1000", "--device=cpu"]
FILLER = "the a of and to in is was it for on with as at by this that from".split()


# -----------------------------------------------------------------------------
# metrics

def test_metrics_against_hand_worked_values():
    pred, y = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # tp 2, tn 1, fp 1, fn 1
    assert ft.accuracy(pred, y) == pytest.approx(3 / 5)
    assert ft.f1(pred, y) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert ft.matthews(pred, y) == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))
    # three classes: confusion rows (truth) [2 0 0] [1 0 1] [0 1 1]; c=3 s=6 t=(2,2,2) p=(3,1,2)
    want = (3 * 6 - 12) / np.sqrt((36 - 14) * (36 - 12))
    assert ft.matthews([0, 2, 1, 0, 0, 2], [0, 1, 2, 0, 1, 2]) == pytest.approx(want)
    assert ft.matthews([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)
    assert ft.matthews([1, 0], [0, 1]) == pytest.approx(-1.0)
    # Pearson of (1,2,3) and (1,2,5): centred (-1,0,1) and (-5,-2,7)/3 -> 4 / sqrt(2 * 78/9)
    assert ft.pearson([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / np.sqrt(2 * 78 / 9))
    assert ft.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert ft.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert ft.pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 0.99


def test_spearman_uses_average_ranks_for_ties():
    np.testing.assert_array_equal(ft.rank([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(ft.rank([3, 1, 3, 3, 0]), [4, 2, 4, 4, 1])
    # ranks (1,2,3,4) and (1,2.5,2.5,4): centred (-1.5,-.5,.5,1.5) and (-1.5,0,0,1.5) -> 4.5 / sqrt(5 * 4.5)
    assert ft.spearman([1, 2, 3, 4], [10, 20, 20, 30]) == pytest.approx(4.5 / np.sqrt(5 * 4.5))


def test_metrics_degenerate_cases_are_defined():
    # constant predictions, or a single class: the denominators are 0 and the value is 0.0 (as in
    # scikit-learn), never NaN and never an error
    assert ft.matthews([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    assert ft.matthews([1, 1, 1], [1, 1, 1]) == 0.0
    assert ft.accuracy([1, 1, 1], [1, 1, 1]) == 1.0
    assert ft.f1([1, 1, 1], [1, 1, 1]) == 1.0
    assert ft.f1([0, 0, 0], [0, 0, 0]) == 0.0  # no positives to find and none predicted
    assert ft.f1([0, 0, 0], [1, 0, 1]) == 0.0
    assert ft.pearson([0.1] * 10, np.arange(10)) == 0.0  # the mean of ten 0.1s is not exactly 0.1
    assert ft.spearman(np.arange(5), [2.0] * 5) == 0.0
    scores = ft.compute_metrics(np.zeros(4, dtype=int), np.zeros(4, dtype=int), 2)
    assert scores == {"accuracy": 1.0, "f1": 0.0, "mcc": 0.0}
    assert set(ft.compute_metrics(np.array([0.5, 1.0]), np.array([0.1, 0.3]), 1)) == {"pearson", "spearman"}
    assert set(ft.compute_metrics(np.array([0, 2]), np.array([1, 2]), 3)) == {"accuracy", "mcc"}


# -----------------------------------------------------------------------------
# labels, tokens, batches

def test_label_names_and_ids():
    assert ft.label_names_from(["pos", "neg", "pos"]) == ["neg", "pos"]
    assert ft.label_names_from(["10", "2", "1", "2"]) == ["1", "2", "10"]  # numeric order, not "1" "10" "2"
    assert ft.label_names_from([0, 1, 1]) == ["0", "1"]  # integers are classes
    assert ft.label_names_from(["0.5", "3", "4.25"]) is None  # a decimal point: regression
    assert ft.label_names_from([0.5, 3]) is None
    assert ft.label_names_from(["1", "2"], "regression") is None
    assert ft.label_names_from(["1.0", "2.0"], "class") == ["1.0", "2.0"]
    assert ft.label_names_from([True, False]) == ["False", "True"]
    np.testing.assert_array_equal(ft.label_ids(["pos", "neg"], ["neg", "pos"], "f"), [1, 0])
    np.testing.assert_array_equal(ft.label_ids([1, 0], ["0", "1"], "f"), [1, 0])
    t = ft.label_ids(["0.5", 3], None, "f")
    assert t.dtype == np.float32 and t.tolist() == [0.5, 3.0]


def test_truncation_is_longest_first():
    def reference(la, lb, budget):  # the original BERT loop, one token at a time
        while la + lb > budget:
            if la > lb:
                la -= 1
            else:
                lb -= 1
        return la, lb
    for la in range(0, 14):
        for lb in range(0, 14):
            for budget in range(0, 16):
                assert ft.truncate_lengths(la, lb, budget) == reference(la, lb, budget), (la, lb, budget)


def test_encode_builds_cls_a_sep_b_sep_and_counts_cuts():
    tok = ft.tokenization.get_tokenizer()
    rows, starts, n_cut = ft.encode(tok, ["hello world", "one two three four five six seven eight"],
                                    ["yes", "a b c d e f g h i j k l"], block_size=12)
    a, b = tok.encode("hello world"), tok.encode("yes")
    assert rows[0] == [tok.cls] + a + [tok.sep] + b + [tok.sep] and starts[0] == len(a) + 2
    assert len(rows[1]) == 12 and n_cut == 1
    # 8 + 12 text tokens, room for 9: B is cut to 8, then they take turns, B first -> 5 + 4
    assert rows[1][:7] == [tok.cls] + tok.encode("one two three four five six seven eight")[:5] + [tok.sep]
    assert rows[1][7:] == tok.encode("a b c d e f g h i j k l")[:4] + [tok.sep]
    rows, starts, n_cut = ft.encode(tok, ["word " * 100], None, block_size=10)
    assert len(rows[0]) == 10 and rows[0][-1] == tok.sep and starts == [10] and n_cut == 1

    x, types, mask = ft.collate({"ids": rows + [[tok.cls, 5, tok.sep]], "starts": starts + [3]}, [1, 0], tok.pad, 64)
    assert x.shape == (2, 16)  # the longest row (10) rounded up to a multiple of 8
    assert x[0, :3].tolist() == [tok.cls, 5, tok.sep] and (x[0, 3:] == tok.pad).all()
    assert mask.sum(1).tolist() == [3, 10] and types.sum() == 0
    _, types, _ = ft.collate({"ids": [[1, 2, 3, 4, 5]], "starts": [3]}, [0], tok.pad, block_size=6)
    assert types.tolist() == [[0, 0, 0, 1, 1, 0]]  # capped at block_size, not rounded past it


def test_length_grouped_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000)
    batches = ft.length_grouped_batches(lengths, 16, np.random.default_rng(1))
    assert [len(b) for b in batches] == [16] * 62  # full batches only: 1000 % 16 = 8 rows sit out
    used = np.concatenate(batches)
    assert len(set(used.tolist())) == 992  # no row twice
    padded = sum(len(b) * lengths[b].max() for b in batches)
    shuffled = rng.permutation(1000)
    padded_random = sum(16 * lengths[shuffled[i:i + 16]].max() for i in range(0, 1000, 16))
    assert padded < 0.7 * padded_random  # grouping by length saves padding
    again = ft.length_grouped_batches(lengths, 16, np.random.default_rng(2))
    assert [b.tolist() for b in again] != [b.tolist() for b in batches]  # a new order each epoch
    assert set(range(1000)) - set(used.tolist()) != set(range(1000)) - set(np.concatenate(again).tolist())  # other rows sit out
    ordered = np.concatenate(ft.length_grouped_batches(lengths, 16))
    assert sorted(ordered.tolist()) == list(range(1000))  # evaluation: every row,
    assert (np.diff(lengths[ordered]) >= 0).all()  # sorted by length


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_csv_and_jsonl_read_alike(tmp_path):
    rows = [{"review": 'great, "really"\nsecond line', "other": "x", "stars": "5"},
            {"review": "bad", "other": "y", "stars": "1"}]
    for path in (write_csv(tmp_path / "r.csv", rows), write_jsonl(tmp_path / "r.jsonl", rows)):
        texts, pairs, labels = ft.get_columns(ft.read_rows(path), path, "review", "other", "stars")
        assert texts == [rows[0]["review"], "bad"] and pairs == ["x", "y"] and labels == ["5", "1"]
    path = write_jsonl(tmp_path / "n.jsonl", [{"t": "a", "y": 0.5}, {"t": "b", "y": 2}])
    texts, pairs, labels = ft.get_columns(ft.read_rows(path), path, "t", "", "y")
    assert pairs is None and labels == [0.5, 2] and ft.label_names_from(labels) is None  # JSON numbers stay numbers
    (tmp_path / "bom.csv").write_bytes("\ufefftext,label\nhello,1\n".encode())  # Excel's "CSV UTF-8"
    assert ft.read_rows(str(tmp_path / "bom.csv")) == [{"text": "hello", "label": "1"}]
    (tmp_path / "bad.jsonl").write_text('{"t": "a"}\n[1, 2]\n')
    with pytest.raises(SystemExit, match="line 2 is not a JSON object"):
        ft.read_rows(str(tmp_path / "bad.jsonl"))
    with pytest.raises(SystemExit, match="unknown file type"):
        ft.read_rows(str(tmp_path / "data.parquet"))


# -----------------------------------------------------------------------------
# end to end: tiny models on generated tasks

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A randomly initialised tiny pretraining checkpoint, in our format."""
    folder = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    config = BertConfig(**TINY)
    model = BertForPreTraining(config)
    runtime.save_checkpoint({"kind": "pretraining", "model": model.state_dict(), "model_config": asdict(config), "tokenizer": "gpt2",
                           "step": 0}, str(folder / "ckpt.pt"))
    return str(folder)


def filler(rng, lo=2, hi=8):
    return [rng.choice(FILLER) for _ in range(rng.randint(lo, hi))]


def insert(rng, words, word, times=1):
    for _ in range(times):
        words.insert(rng.randint(0, len(words)), word)
    return " ".join(words)


def make_task(kind, n, seed):
    """Rows of a task only the right inputs can solve:
    sentiment: one of good/bad among filler words -> pos/neg
    segment:   (pair) "apple" in text A or in text B -> "A"/"B", so the model must tell the segments apart
    count:     0-3 copies of "good" -> 0.0, 0.5, 1.0, 1.5 (regression)
    count_b:   (pair) the same, counted in text B only; A holds 0-3 distracting copies"""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if kind == "sentiment":
            y = rng.random() < 0.5
            rows.append({"text": insert(rng, filler(rng), "good" if y else "bad"), "label": "pos" if y else "neg"})
        elif kind == "segment":
            y = rng.random() < 0.5
            a, b = filler(rng), filler(rng)
            rows.append({"text": insert(rng, a, "apple") if y else " ".join(a),
                         "text_b": " ".join(b) if y else insert(rng, b, "apple"), "label": "A" if y else "B"})
        elif kind == "count":
            k = rng.randint(0, 3)
            rows.append({"text": insert(rng, filler(rng), "good", k), "label": k / 2})
        elif kind == "count_b":
            k = rng.randint(0, 3)
            rows.append({"text": insert(rng, filler(rng), "good", rng.randint(0, 3)),
                         "text_b": insert(rng, filler(rng), "good", k), "label": f"{k / 2:.1f}"})
    return rows


def files(tmp_path, kind, fmt, n_train=512, n_val=128):
    write = write_csv if fmt == "csv" else write_jsonl
    return [f"--train_file={write(tmp_path / f'train.{fmt}', make_task(kind, n_train, 0))}",
            f"--val_file={write(tmp_path / f'val.{fmt}', make_task(kind, n_val, 1))}"]


@pytest.mark.parametrize("kind, fmt, metric, threshold", [
    ("sentiment", "csv", "accuracy", 0.95),
    ("segment", "jsonl", "accuracy", 0.95),
    ("count", "jsonl", "spearman", 0.9),
    ("count_b", "csv", "spearman", 0.8),
])
@pytest.mark.slow
def test_tiny_model_learns_generated_task(tmp_path, pretrained, kind, fmt, metric, threshold):
    pair = ["--text_pair_column=text_b"] if kind in ("segment", "count_b") else []
    out = tmp_path / "out"
    result = ft.main([*FAST, f"--init_from={pretrained}", f"--out_dir={out}", "--epochs=4", *pair,
                      *files(tmp_path, kind, fmt)])
    assert result["metric"] == metric
    assert result["best"] > threshold, result["history"]  # chance is 0.5 accuracy, 0 correlation
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["best_val_metric"] == result["best"] == max(h[metric] for h in result["history"])
    assert ckpt["n_labels"] == (1 if kind.startswith("count") else 2)
    assert ckpt["labels"] == {"sentiment": ["neg", "pos"], "segment": ["A", "B"]}.get(kind)
    assert ckpt["tokenizer"] == "gpt2" and ckpt["metric"] == metric and ckpt["config"]["text_pair_column"] == (
        "text_b" if pair else "")


def test_eval_only_and_test_predictions(tmp_path, pretrained, capsys):
    out = tmp_path / "out"
    test_rows = [{"text": r["text"]} for r in make_task("sentiment", 40, 2)]  # no label column
    test_file = write_csv(tmp_path / "test.csv", test_rows)
    result = ft.main([*FAST, f"--init_from={pretrained}", f"--out_dir={out}", "--epochs=2",
                      *files(tmp_path, "sentiment", "csv"), f"--test_file={test_file}"])
    lines = (out / "predictions.tsv").read_text().splitlines()
    rows = list(csv.DictReader(lines, delimiter="\t"))
    assert len(rows) == 40 and [r["text"] for r in rows] == [r["text"] for r in test_rows]
    want = ["pos" if "good" in r["text"].split() else "neg" for r in make_task("sentiment", 40, 2)]
    assert np.mean([r["prediction"] == w for r, w in zip(rows, want)]) > 0.9
    assert all(0.5 <= float(r["probability"]) <= 1 for r in rows)  # of the predicted class, out of two

    before = (out / "ckpt.pt").read_bytes()
    val = files(tmp_path, "sentiment", "csv")[1]
    (out / "predictions.tsv").unlink()
    scores = ft.main(["--eval_only=True", "--compile=False", "--device=cpu", f"--init_from={out}", val,
                      f"--test_file={test_file}"])["val"]
    assert (out / "predictions.tsv").read_text().splitlines() == lines  # written beside the checkpoint
    assert scores["accuracy"] == pytest.approx(result["best"])  # block_size and columns come from the checkpoint
    assert (out / "ckpt.pt").read_bytes() == before
    # a head trained on the pooled [CLS] vector cannot score mean-pooled features: no fresh head is evaluated
    with pytest.raises(SystemExit, match="its head does not read pooling='mean'"):
        ft.main(["--eval_only=True", "--compile=False", "--device=cpu", f"--init_from={out}", val, "--pooling=mean"])
    assert (out / "ckpt.pt").read_bytes() == before and (out / "predictions.tsv").read_text().splitlines() == lines
    # a test file with labels is scored as well
    labelled = write_csv(tmp_path / "labelled.csv", make_task("sentiment", 40, 2))
    ft.main(["--eval_only=True", "--device=cpu", f"--init_from={out}", val, f"--test_file={labelled}"])
    assert re.search(r"^test accuracy (0\.9\d*|1\.0+) ", capsys.readouterr().out, re.M)


@pytest.mark.slow
def test_two_processes_share_each_batch(tmp_path, pretrained):
    """torchrun with 2 CPU processes (gloo): each takes half of every batch and half of the validation
    batches; the master logs and saves."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "finetune.py"), *FAST, f"--init_from={pretrained}", f"--out_dir={tmp_path / 'out'}",
           "--epochs=4", *files(tmp_path, "sentiment", "csv")]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(2 processes x 16)" in run.stdout and run.stdout.count("val accuracy") == 4  # printed once, by the master
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert ckpt["best_val_metric"] > 0.95
    # the two halves of the evaluation add up to what one process scores
    val = files(tmp_path, "sentiment", "csv")[1]
    scores = ft.main(["--eval_only=True", "--compile=False", "--device=cpu", f"--init_from={tmp_path / 'out'}", val])["val"]
    assert scores == pytest.approx(ckpt["val_metrics"], abs=1e-6)


@pytest.mark.slow
def test_freeze_encoder_trains_the_head_only(tmp_path, pretrained, monkeypatch):
    # an encoder that knows the task (fine-tuned on it), probed with a fresh head: renamed labels
    tuned = tmp_path / "tuned"
    ft.main([*FAST, f"--init_from={pretrained}", f"--out_dir={tuned}", "--epochs=2",
             *files(tmp_path, "sentiment", "csv")])
    renamed = {"pos": "positive", "neg": "negative"}
    probe_files = []
    for split, n, seed in (("train", 256, 3), ("val", 128, 4)):
        rows = [{**r, "label": renamed[r["label"]]} for r in make_task("sentiment", n, seed)]
        probe_files.append(f"--{split}_file={write_csv(tmp_path / f'probe_{split}.csv', rows)}")

    with_grad, first_head = [], []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm):  # finetune.py clips the gradients of all parameters before each update
        params = list(params)
        with_grad.append(sum(p.grad is not None for p in params))
        if not first_head:
            first_head.extend(p.detach().clone() for p in params if p.grad is not None)
        return clip(params, max_norm)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    out = tmp_path / "probe"
    result = ft.main([*FAST, f"--init_from={tuned}", f"--out_dir={out}", "--epochs=3", "--freeze_encoder=True",
                      "--learning_rate=1e-2", "--dropout=0.1", *probe_files])
    assert with_grad and set(with_grad) == {2}  # classifier weight and bias: no encoder gradient computed
    start = torch.load(tuned / "ckpt.pt", weights_only=True)["model"]
    probed = torch.load(out / "ckpt.pt", weights_only=True)["model"]
    encoder = [k for k in probed if k.startswith("bert.")]
    assert len(encoder) > 10
    for k in encoder:
        assert torch.equal(probed[k], start[k]), k  # bit-identical
    assert not torch.equal(probed["classifier.weight"], first_head[0])
    assert result["best"] > 0.9, result["history"]  # the head alone learned to read the frozen features


def test_long_texts_are_cut_and_counted_and_the_precision_is_logged(tmp_path, pretrained, capsys):
    rows = make_task("sentiment", 64, 0)
    for r in rows[:5]:
        r["text"] = r["text"] + " and" * 100  # the label word stays in front
    train_file = write_csv(tmp_path / "train.csv", rows)
    ft.main([*FAST, f"--init_from={pretrained}", f"--out_dir={tmp_path / 'out'}", "--epochs=1", "--dtype=float32",
             f"--train_file={train_file}", f"--val_file={train_file}"])
    out = capsys.readouterr().out
    assert "train: 64 rows, 5 cut to block_size=64" in out
    assert "cls pooling); torch.float32 on cpu" in out  # a reader of the log can tell bf16 runs from float32 ones


@pytest.mark.slow
def test_named_task_through_datasets(tmp_path, pretrained, monkeypatch):
    """A GLUE task as `datasets` serves it (ClassLabel ids, -1 on the unlabelled test split), with the
    download replaced by generated rows: the hub is out of reach in tests."""
    datasets = pytest.importorskip("datasets")
    names = ["not_equivalent", "equivalent"]

    def split(rows, labelled=True):
        features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=names), "idx": datasets.Value("int32")})
        return datasets.Dataset.from_dict({
            "sentence1": [r["text"] for r in rows], "sentence2": [r["text_b"] for r in rows],
            "label": [int(r["label"] == "A") if labelled else -1 for r in rows], "idx": list(range(len(rows)))},
            features=features)

    def load_dataset(path, name=None):
        assert (path, name) == ("nyu-mll/glue", "mrpc")
        return datasets.DatasetDict(train=split(make_task("segment", 512, 0)),
                                    validation=split(make_task("segment", 128, 1)),
                                    test=split(make_task("segment", 20, 2), labelled=False))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = tmp_path / "out"
    result = ft.main([os.path.join(ROOT, "config", "finetune_mrpc.py"), *FAST, f"--init_from={pretrained}",
                      f"--out_dir={out}", "--epochs=4"])
    assert result["metric"] == "f1" and result["best"] > 0.95, result["history"]
    assert set(result["history"][0]) == {"accuracy", "f1", "mcc"}
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["labels"] == names and ckpt["task"] == "mrpc"
    lines = (out / "predictions.tsv").read_text().splitlines()
    want = [names[r["label"] == "A"] for r in make_task("segment", 20, 2)]
    assert [line.split("\t")[1] for line in lines[1:]] == want


# -----------------------------------------------------------------------------
# bad input: one clear message, nothing overwritten

def bad_setups(tmp_path, pretrained):
    good = make_task("sentiment", 64, 0)
    small_vocab = tmp_path / "small_vocab"
    small_vocab.mkdir()
    config = BertConfig(**{**TINY, "vocab_size": 1000})
    runtime.save_checkpoint({"kind": "pretraining", "model": BertForPreTraining(config).state_dict(), "model_config": asdict(config),
                           "tokenizer": "gpt2"}, str(small_vocab / "ckpt.pt"))
    return {
        "missing label column": ([f"--label_column=sentiment"], good, good, "has no column 'sentiment'"),
        "val label unseen in training": ([], good, good[:10] + [{"text": "so so", "label": "meh"}],
                                         "label 'meh' never appears in the training data"),
        "empty text": ([], good[:20] + [{"text": "   ", "label": "pos"}] + good[20:], good, "row 21: empty text"),
        "single class": ([], [r for r in good if r["label"] == "pos"], good, "single label"),
        "vocab mismatch": ([f"--init_from={small_vocab}"], good, good, "do not belong together"),
        "unknown metric": (["--metric=pearson"], good, good, "does not apply"),
    }


@pytest.mark.parametrize("case", ["missing label column", "val label unseen in training", "empty text",
                                  "single class", "vocab mismatch", "unknown metric"])
def test_bad_input_one_clear_message_nothing_overwritten(tmp_path, pretrained, case):
    flags, train_rows, val_rows, message = bad_setups(tmp_path, pretrained)[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"an earlier run")
    with pytest.raises(SystemExit, match=message):
        ft.main([*FAST, f"--init_from={pretrained}", f"--out_dir={out}", "--overwrite=True", *flags,
                 f"--train_file={write_csv(tmp_path / 'train.csv', train_rows)}",
                 f"--val_file={write_csv(tmp_path / 'val.csv', val_rows)}",
                 f"--test_file={write_csv(tmp_path / 'test.csv', val_rows)}"])
    assert sorted(os.listdir(out)) == ["ckpt.pt"] and (out / "ckpt.pt").read_bytes() == b"an earlier run"


def test_refuses_to_replace_a_checkpoint_unless_told(tmp_path, pretrained):
    out = tmp_path / "out"
    args = [*FAST, f"--init_from={pretrained}", f"--out_dir={out}", *files(tmp_path, "sentiment", "csv", 32, 8)]
    ft.main(args)
    before = (out / "ckpt.pt").read_bytes()
    with pytest.raises(SystemExit, match="already holds a checkpoint.*--overwrite=True"):
        ft.main(args)
    assert (out / "ckpt.pt").read_bytes() == before
    ft.main(args + ["--overwrite=True", "--seed=2"])
    assert (out / "ckpt.pt").read_bytes() != before
    # the log is the new run's alone, and no log.jsonl.new is left
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl"]
    assert runtime.load_checkpoint(out)["config"]["seed"] == 2
    epochs = [r["epoch"] for r in runtime.read_log(out / "log.jsonl") if "val_accuracy" in r]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > 1


def test_refuses_to_overwrite_its_own_starting_point(tmp_path, pretrained):
    before = open(os.path.join(pretrained, "ckpt.pt"), "rb").read()
    with pytest.raises(SystemExit, match="would overwrite the checkpoint it starts from"):
        ft.main([*FAST, f"--init_from={pretrained}", f"--out_dir={pretrained}",
                 *files(tmp_path, "sentiment", "csv", 32, 8)])
    assert open(os.path.join(pretrained, "ckpt.pt"), "rb").read() == before
    with pytest.raises(SystemExit, match="holds neither ckpt.pt"):
        ft.main([*FAST, f"--init_from={tmp_path}", f"--out_dir={tmp_path / 'out'}",
                 *files(tmp_path, "sentiment", "csv", 32, 8)])
    with pytest.raises(SystemExit, match="set task to one of"):
        ft.main([*FAST, f"--init_from={pretrained}"])
    with pytest.raises(SystemExit, match="named task"):
        ft.main([*FAST, "--task=sst2", *files(tmp_path, "sentiment", "csv", 32, 8)])


# -----------------------------------------------------------------------------
# a HuggingFace checkpoint folder: transformers' save_pretrained and a hand-written vocab.txt

WORDS = ["the", "a", "of", "and", "to", "in", "is", "it", "good", "bad", "apple", "was", "on"]


def hf_folder(path, vocab_size):
    transformers = pytest.importorskip("transformers")  # test-only: writes the reference checkpoint format
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=vocab_size, max_position_embeddings=64, num_hidden_layers=2,
                                  num_attention_heads=2, hidden_size=32, intermediate_size=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    transformers.BertForPreTraining(cfg).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return str(path)


@pytest.mark.slow
def test_hf_checkpoint_folder(tmp_path):
    folder = hf_folder(tmp_path / "hf", vocab_size=32)  # a padded embedding table: 18 words used
    out = tmp_path / "out"
    result = ft.main([*FAST, f"--init_from={folder}", f"--out_dir={out}", "--epochs=3",
                      *files(tmp_path, "sentiment", "jsonl")])
    assert result["best"] > 0.95, result["history"]
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["tokenizer"] == "wordpiece" and ckpt["model_config"]["vocab_size"] == 32
    assert (out / "vocab.txt").read_text() == (tmp_path / "hf" / "vocab.txt").read_text()  # out_dir stands alone
    val = files(tmp_path, "sentiment", "jsonl")[1]
    scores = ft.main(["--eval_only=True", "--compile=False", "--device=cpu", f"--init_from={out}", val])["val"]
    assert scores["accuracy"] == pytest.approx(result["best"])

    small = hf_folder(tmp_path / "hf_small", vocab_size=12)  # vocab.txt has 18 entries
    with pytest.raises(SystemExit, match="do not belong together"):
        ft.main([*FAST, f"--init_from={small}", f"--out_dir={tmp_path / 'out2'}", *files(tmp_path, "sentiment", "jsonl")])


def test_freeze_embeddings_keeps_the_tables_and_trains_the_rest(tmp_path, pretrained):
    out = tmp_path / "out"
    ft.main([*FAST, f"--init_from={pretrained}", f"--out_dir={out}", "--epochs=1", "--freeze_embeddings=True",
             *files(tmp_path, "sentiment", "csv", 64, 16)])
    start = runtime.load_checkpoint(pretrained)["model"]
    tuned = runtime.load_checkpoint(str(out))["model"]
    for k in ("bert.wte.weight", "bert.wpe.weight", "bert.wtt.weight"):
        assert torch.equal(tuned[k], start[k]), k
    assert not torch.equal(tuned["bert.h.0.mlp.fc.weight"], start["bert.h.0.mlp.fc.weight"])
    assert not torch.equal(tuned["bert.ln_emb.weight"], start["bert.ln_emb.weight"])


@pytest.mark.parametrize("init_from", ["out", "out-tiny", "./runs/x", "runs/a/b", "/no/such/run"])
def test_a_local_path_that_is_not_here_never_goes_to_the_hub(tmp_path, monkeypatch, init_from):
    """finetune.py's default init_from, 'out', is a folder that config/bert_tiny.py never writes: it must
    say so at once instead of waiting on the hub's retries."""
    import huggingface_hub
    data = files(tmp_path, "sentiment", "csv", 32, 32)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("it asked the hub"))
    with pytest.raises(SystemExit, match=f"no folder {init_from} here: point at a run folder"):
        ft.main([f"--init_from={init_from}", *data, "--device=cpu"])
    assert sorted(os.listdir(tmp_path)) == ["train.csv", "val.csv"]


def test_the_learning_rate_follows_the_encoder_when_not_given():
    assert ft.default_learning_rate(768) == 2e-5  # BERT's, for BERT-base
    assert ft.default_learning_rate(1024) == 2e-5
    assert ft.default_learning_rate(128) == 1e-3  # bert_tiny: 2e-5 leaves it at chance
    rates = [ft.default_learning_rate(w) for w in (64, 128, 256, 512, 768)]
    assert rates == sorted(rates, reverse=True)
