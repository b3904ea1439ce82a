"""train.py: masking, sentence pairs, the training loop, resume, DDP and bad input. CPU only."""
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import runtime  # noqa: E402
import train  # noqa: E402
from model import BertForPreTraining, max_predictions_for  # noqa: E402
from tokenizer import GPT2Tokenizer  # noqa: E402

VOCAB = GPT2Tokenizer()  # the default vocabulary; a trained one has the same layout (text ids, then the specials)
EOT, CLS, SEP, MASK, PAD = VOCAB.eot, VOCAB.cls, VOCAB.sep, VOCAB.mask, VOCAB.pad
N_TEXT, VOCAB_SIZE = VOCAB.eot, VOCAB.rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(folder, train_docs, val_docs, **meta_changes):
    """prepare.py's output format: <split>.bin (uint16, doc EOT doc EOT ...), <split>_docs.npy, meta.json."""
    os.makedirs(folder, exist_ok=True)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        tokens = np.concatenate([np.append(np.asarray(d, np.uint16), np.uint16(EOT)) for d in docs])
        tokens.tofile(os.path.join(folder, f"{split}.bin"))
        offs = np.concatenate([[0], np.cumsum([len(d) + 1 for d in docs])]).astype(np.int64)
        np.save(os.path.join(folder, f"{split}_docs.npy"), offs)
    meta = dict(tokenizer="gpt2", vocab_size=VOCAB_SIZE, dtype="uint16",
                special_ids=dict(eot=EOT, cls=CLS, sep=SEP, mask=MASK, pad=PAD))
    meta.update(meta_changes)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)
    return str(folder)


def counting_docs(n, rng, lo=20, hi=200, vocab=300, common=0.4):
    """Learnable documents: runs of consecutive ids (a, a+1, ...), so a masked token follows from its
    neighbours and a true next segment continues the count; a share `common` of the tokens is one
    frequent id (like "the"), so even a few steps learn something measurable."""
    docs = []
    for _ in range(n):
        a, L = rng.integers(0, vocab), rng.integers(lo, hi)
        doc = 100 + (a + np.arange(L)) % vocab
        doc[rng.random(L) < common] = 99
        docs.append(doc)
    return docs


def coded_docs(lengths):
    """Document d's token j is 1000 * d + j, so every token says where it came from."""
    return [1000 * d + np.arange(L) for d, L in enumerate(lengths)]


@pytest.fixture(autouse=True)
def one_thread():
    # tiny ops: a second OpenMP thread only adds synchronisation (and is far slower on a busy machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def counting(tmp_path_factory):
    rng = np.random.default_rng(0)
    return write_corpus(tmp_path_factory.mktemp("counting"), counting_docs(400, rng), counting_docs(40, rng))


def tiny_run(data_dir, out_dir, *flags):
    """argv for a 1-layer, 32-wide BERT that takes a few ms per step on a CPU."""
    return [f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--device=cpu", "--compile=False",
            "--n_layer=1", "--n_head=2", "--n_embd=32", "--max_positions=64", "--block_size=32",
            "--batch_size=8", "--tokens_per_step=256", "--learning_rate=3e-3", "--warmup_steps=2",
            "--eval_iters=2", "--log_interval=1", *flags]


# -----------------------------------------------------------------------------
# Masking

def test_mask_statistics():
    rng = np.random.default_rng(0)
    B, T, P = 2000, 64, max_predictions_for(64, 0.15)
    idx = rng.integers(0, N_TEXT, (B, T))
    n_pad = rng.integers(0, 40, B)  # rows of every length, with the specials where they go in a pair
    idx[np.arange(T)[None, :] >= T - n_pad[:, None]] = PAD
    idx[:, 0], idx[:, 10], idx[:, 11] = CLS, SEP, EOT
    inputs, labels = train.mask_tokens(idx, rng, 0.15, P, VOCAB)
    chosen = labels != -100
    is_text = idx < N_TEXT
    # exactly round(15%) of each row's text tokens, at least one, never more than the model keeps
    expect = np.maximum(np.rint(0.15 * is_text.sum(1)), 1)
    assert np.array_equal(chosen.sum(1), expect) and chosen.sum(1).max() <= P
    assert not np.any(chosen & ~is_text), "a special token or padding was masked"
    assert np.array_equal(labels[chosen], idx[chosen])
    assert np.array_equal(inputs[~chosen], idx[~chosen]), "an unchosen token was changed"
    # 80% [MASK], 10% random text token, 10% unchanged (a random draw equal to the original is rare)
    n = chosen.sum()
    as_mask, kept = inputs[chosen] == MASK, inputs[chosen] == idx[chosen]
    as_random = ~as_mask & ~kept
    assert abs(as_mask.sum() / n - 0.8) < 0.01
    assert abs(as_random.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01
    assert inputs[chosen][as_random].max() < N_TEXT, "a random replacement was not a text token"
    # dynamic: the same rows masked again are masked differently
    _, labels2 = train.mask_tokens(idx, rng, 0.15, P, VOCAB)
    assert (labels2 != -100).sum() == n and not np.array_equal(labels2 != -100, chosen)


def test_mask_rate_is_configurable():
    rng = np.random.default_rng(1)
    idx = rng.integers(0, N_TEXT, (50, 100))
    _, labels = train.mask_tokens(idx, rng, 0.4, max_predictions_for(100, 0.4), VOCAB)
    assert np.all((labels != -100).sum(1) == 40)


def test_whole_word_masking():
    rng = np.random.default_rng(0)
    starts, ends_line = np.zeros(VOCAB_SIZE, bool), np.zeros(VOCAB_SIZE, bool)
    starts[np.arange(0, N_TEXT, 3)] = True   # words of 1, 2 or 3 tokens, depending on the ids
    ends_line[7] = True                     # token 7 ends a line: the next token starts a word
    B, T = 1000, 64
    idx = rng.integers(0, N_TEXT, (B, T))
    idx[:, 0], idx[:, 30], idx[:, -1] = CLS, SEP, SEP
    idx[:, 20] = 7
    P = max_predictions_for(T, 0.15)
    inputs, labels = train.mask_tokens(idx, rng, 0.15, P, VOCAB, (starts, ends_line))
    chosen = labels != -100
    is_text = idx < N_TEXT
    prev = np.concatenate([np.full((B, 1), CLS), idx[:, :-1]], 1)
    start = is_text & (starts[idx] | ends_line[prev] | (prev >= N_TEXT))
    assert start[:, 1].all() and start[:, 31].all() and start[:, 21].all()
    for r in range(B):
        word = np.cumsum(start[r]) - 1
        for w in np.unique(word[is_text[r]]):
            toks = chosen[r][is_text[r] & (word == w)]
            assert toks.all() or not toks.any(), f"row {r}: word {w} partly masked"
    target = np.maximum(np.rint(0.15 * is_text.sum(1)), 1)
    counts = chosen.sum(1)
    assert np.all(counts <= target) and not np.any(chosen & ~is_text)
    assert np.mean(counts == target) > 0.99  # a word is skipped only if it would overshoot
    assert abs((inputs[chosen] == MASK).mean() - 0.8) < 0.02


def test_word_boundaries_of_gpt2():
    tok = VOCAB
    starts, ends_line = tok.word_boundaries()
    (cat,), (space_cat,), (newline,) = tok.encode("cat"), tok.encode(" cat"), tok.encode("\n")
    assert starts[space_cat] and not starts[cat] and starts[newline] and ends_line[newline]
    assert not starts[CLS] and not starts[PAD] and not starts[EOT]
    # " antidisestablishmentarianism" is five BPE pieces; only the first starts a word
    ids = tok.encode(" antidisestablishmentarianism")
    assert len(ids) > 1 and starts[ids[0]] and not starts[ids[1:]].any()


# -----------------------------------------------------------------------------
# Sentence pairs and packed rows

def test_nsp_pairs(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [2, 3, 5, 8, 13, 21, 40, 80, 150, 300, 600, 999] * 3  # shorter and longer than a row
    data = write_corpus(tmp_path, coded_docs(lengths), coded_docs([10, 10]))
    corpus = train.Corpus(data, "train", VOCAB)
    B, T = 4000, 64
    idx, types, attn, labels = train.nsp_rows(corpus, rng, B, T)
    assert idx.shape == types.shape == attn.shape == (B, T) and labels.shape == (B,)
    assert abs(labels.mean() - 0.5) < 0.03
    assert not np.any(idx == EOT), "a segment crossed a document boundary"
    for r in range(B):
        row = idx[r]
        seps = np.flatnonzero(row == SEP)
        assert row[0] == CLS and len(seps) == 2
        s1, s2 = seps
        a, b = row[1:s1], row[s1 + 1:s2]
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= T - 3
        assert np.all(row[s2 + 1:] == PAD) and np.array_equal(attn[r], row != PAD)
        assert np.all(types[r, :s1 + 1] == 0) and np.all(types[r, s1 + 1:s2 + 1] == 1) and np.all(types[r, s2 + 1:] == 0)
        (da, pa), (db, pb) = np.divmod(a, 1000), np.divmod(b, 1000)
        assert np.all(da == da[0]) and np.all(np.diff(pa) == 1), "A is not contiguous text of one document"
        assert np.all(db == db[0]) and np.all(np.diff(pb) == 1), "B is not contiguous text of one document"
        if labels[r] == 0:
            assert db[0] == da[0] and pb[0] == pa[-1] + 1, "IsNext B does not follow A"
        else:
            assert db[0] != da[0], "a random B came from A's document"
            if lengths[db[0]] >= T:
                # the random B is as long as the true B would be, so length does not give the label away
                assert len(a) + len(b) == min(lengths[da[0]], T - 3)
    # a document longer than a row is used all along its length, not only its start
    a_starts = idx[:, 1] % 1000
    assert a_starts.max() > 500


def test_packed_rows(tmp_path):
    data = write_corpus(tmp_path, coded_docs([5, 30, 7, 50]), coded_docs([10, 10]))
    corpus = train.Corpus(data, "train", VOCAB)
    idx = train.packed_rows(corpus, np.random.default_rng(0), 500, 16)
    stream = np.fromfile(os.path.join(data, "train.bin"), np.uint16).astype(np.int64)
    stream[stream == EOT] = SEP
    assert np.all(idx[:, 0] == CLS) and np.all(idx[:, -1] == SEP) and not np.any(idx == PAD)
    assert np.any(idx[:, 1:-1] == SEP), "documents are packed, separated by [SEP]"
    for row in idx:
        text = row[1:-1]
        start = np.flatnonzero(stream == text[0])
        assert any(np.array_equal(stream[s:s + len(text)], text) for s in start), "row is not contiguous text"


def test_batch_is_a_pure_function_of_seed_step_and_shard(counting):
    corpus = train.Corpus(counting, "train", VOCAB)
    P = max_predictions_for(32, 0.15)

    def get(seed, step, shard):
        return train.get_batch(corpus, train.batch_rng(seed, "train", step, shard), 4, 32, True, 0.15, P)

    a, b = get(1, 5, 0), get(1, 5, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for other in (get(2, 5, 0), get(1, 6, 0), get(1, 5, 1)):
        assert not torch.equal(a["idx"], other["idx"])
    assert a["idx"].dtype == a["mlm_labels"].dtype == a["token_type_ids"].dtype == torch.long
    assert a["attention_mask"].dtype == torch.bool and a["nsp_labels"].shape == (4,)
    mlm_only = train.get_batch(corpus, train.batch_rng(1, "train", 5, 0), 4, 32, False, 0.15, P)
    assert mlm_only["nsp_labels"] is None and mlm_only["attention_mask"] is None


# -----------------------------------------------------------------------------
# Schedule and helpers

def test_get_lr():
    lr = [runtime.get_lr(s, 1.0, 10, 110, 0.1) for s in range(120)]
    assert lr[0] < lr[5] < lr[9] < lr[10] == 1.0
    assert all(a > b for a, b in zip(lr[10:110], lr[11:111]))   # decays...
    assert abs(lr[60] - 0.55) < 1e-9                              # ...linearly, as in BERT
    assert lr[110] == lr[119] == 0.1
    cos = [runtime.get_lr(s, 1.0, 10, 110, 0.1, "cosine") for s in (10, 60, 110)]
    assert cos[0] == 1.0 and abs(cos[1] - 0.55) < 1e-9 and cos[2] == 0.1
    assert runtime.get_lr(35, 1.0, 10, 110, 0.1, "cosine") > runtime.get_lr(35, 1.0, 10, 110, 0.1)


def test_device_and_precision_stand_ins(monkeypatch):
    assert runtime.init_distributed() == (False, 0, 0, 1)
    assert runtime.pick_device("auto") in ("cpu", "mps") or runtime.pick_device("auto").startswith("cuda:")
    assert runtime.pick_device("cpu") == "cpu"
    monkeypatch.setenv("RANK", "1")  # under torchrun, each process's GPU is its LOCAL_RANK's
    with pytest.raises(SystemExit, match="use --device=cuda"):
        runtime.pick_device("cuda:1", local_rank=1)
    ctx, scaler = runtime.autocast_and_scaler("cpu")
    assert not scaler.is_enabled()
    with ctx:
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    ctx, scaler = runtime.autocast_and_scaler("cpu", "bfloat16")
    with ctx:
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(SystemExit, match="dtype"):
        runtime.autocast_and_scaler("cpu", "float8")


KEEP_FREED_PROBE = """
import ctypes, sys, torch, runtime

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
kept = runtime.keep_freed_memory() if sys.argv[1] == "keep" else None
x = torch.ones(2 ** 26); during = libc.mallinfo2(); del x; after = libc.mallinfo2()  # 256 MiB, then freed
print(kept, during.hblkhd >> 20, during.arena >> 20, after.arena >> 20)  # MiB mmapped, heap, heap
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_keep_freed_memory():
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", KEEP_FREED_PROBE, mode], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()
    # by default a 256 MiB tensor is a block of its own, mmapped and handed back when freed
    kept, mmapped, heap, heap_after = probe("default")
    assert int(mmapped) >= 256
    # kept: it comes from the heap, and the heap keeps it after the tensor is gone, for the next step
    kept, mmapped, heap, heap_after = probe("keep")
    assert kept == "True" and int(mmapped) < 256 and int(heap) >= 256 and int(heap_after) >= 256


# -----------------------------------------------------------------------------
# Training

def test_overfit_one_batch(counting):
    from model import BertConfig, BertForPreTraining
    torch.manual_seed(0)
    corpus = train.Corpus(counting, "train", VOCAB)
    P = max_predictions_for(32, 0.15)
    batch = train.get_batch(corpus, train.batch_rng(0, "train", 0, 0), 8, 32, True, 0.15, P)
    model = BertForPreTraining(BertConfig(max_positions=32, n_layer=1, n_head=2, n_embd=32, dropout=0.0))
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.99), "cpu")
    for _ in range(150):
        mlm_logits, nsp_logits, loss = model(**batch, max_predictions=P)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = train.summarize(train.batch_metrics(mlm_logits, nsp_logits, batch, P))
    assert loss.item() < 0.05 and m["mlm_acc"] == 1.0 and m["nsp_acc"] == 1.0


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_short_run_lowers_val_loss(counting, tmp_path):
    out = tmp_path / "out"
    model = train.main(tiny_run(counting, out, "--max_steps=60", "--eval_interval=30", "--eval_iters=4",
                                "--learning_rate=1e-2", "--warmup_steps=5"))
    evals = [r for r in read_log(out) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 30, 60]
    assert evals[-1]["val_mlm_loss"] < evals[0]["val_mlm_loss"] - 5   # from ln(50304) = 10.8
    assert evals[0]["val_mlm_acc"] < 0.01 and evals[-1]["val_mlm_acc"] > 0.3
    steps = [r for r in read_log(out) if "lr" in r]
    assert len(steps) == 60 and all(k in steps[0] for k in ("loss", "mlm_acc", "nsp_acc", "ms_per_step", "tokens_per_sec", "mfu"))
    ckpt = runtime.load_checkpoint(str(out))
    assert {"model", "model_config", "optimizer", "step", "best_val_loss", "config", "tokenizer", "kind", "checksum"} <= set(ckpt)
    assert ckpt["kind"] == "pretraining" and evals[-1]["tokens"] == 60 * 256
    assert ckpt["step"] == 60 and ckpt["tokenizer"] == "gpt2" and ckpt["best_val_loss"] == evals[-1]["val_loss"]
    assert ckpt["config"]["max_steps"] == 60 and ckpt["model_config"]["n_embd"] == 32
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ckpt["model"].items())


@pytest.mark.slow
def test_compiled_bf16_run(counting, tmp_path):
    """The GPU recipe, torch.compile and bf16 autocast, on the CPU: it learns, and compiles one graph for
    training and one for evaluation, never one per step."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        train.main(tiny_run(counting, tmp_path, "--max_steps=9", "--eval_interval=3", "--compile=True", "--dtype=bfloat16"))
    evals = [r["val_loss"] for r in read_log(tmp_path) if "val_loss" in r]
    assert len(evals) == 4 and evals[-1] < evals[0] - 0.3


def test_mlm_only_run(counting, tmp_path):
    out = tmp_path / "out"
    model = train.main(tiny_run(counting, out, "--max_steps=4", "--eval_interval=4", "--nsp=False"))
    last = read_log(out)[-1]
    assert last["step"] == 4 and "val_mlm_loss" in last and "val_nsp_loss" not in last
    # the pooler and NSP head, which MLM alone never trains, are frozen at their initial weights
    torch.manual_seed(1337)  # train.py's seed: its initial weights
    fresh = BertForPreTraining(model.config)
    for name in ("bert.pooler.weight", "nsp.weight"):
        assert not model.get_parameter(name).requires_grad
        assert torch.equal(model.get_parameter(name), fresh.get_parameter(name))
    assert not torch.equal(model.bert.wte.weight, fresh.bert.wte.weight)
    # a resume keeps the setting; switching it says how to resume
    train.main(tiny_run(counting, out, "--max_steps=6", "--eval_interval=4", "--nsp=False", "--init_from=resume"))
    assert read_log(out)[-1]["step"] == 6
    with pytest.raises(SystemExit, match="trained with nsp=False, but this command says nsp=True"):
        train.main(tiny_run(counting, out, "--max_steps=8", "--init_from=resume", "--nsp=True"))


def test_resume_is_exact(counting, tmp_path):
    # dropout stays on: its masks, like the batches, follow from (seed, step, rank)
    common = ("--max_steps=8", "--eval_interval=4", "--dropout=0.1", "--tokens_per_step=512")  # 2 micro-steps
    whole = train.main(tiny_run(counting, tmp_path / "a", *common))
    train.main(tiny_run(counting, tmp_path / "b", *common, "--run_steps=3"))
    assert runtime.load_checkpoint(str(tmp_path / "b"))["step"] == 3
    resumed = train.main(tiny_run(counting, tmp_path / "b", *common, "--init_from=resume"))
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), f"{k} differs after resume"
    a, b = (runtime.load_checkpoint(str(tmp_path / d)) for d in "ab")
    assert a["step"] == b["step"] == 8
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_signal_saves_and_stops(counting, tmp_path):
    out = tmp_path / "out"

    def interrupt_after_first_step():
        log = out / "log.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline:
            if log.exists() and any("lr" in json.loads(line) for line in log.read_text().splitlines()):
                os.kill(os.getpid(), __import__("signal").SIGTERM)
                return
            time.sleep(0.02)

    threading.Thread(target=interrupt_after_first_step, daemon=True).start()
    with pytest.raises(SystemExit) as e:  # saved, but not finished: the shell's code for SIGTERM
        train.main(tiny_run(counting, out, "--max_steps=100000", "--eval_interval=100000"))
    assert e.value.code == 143
    step = runtime.load_checkpoint(str(out))["step"]
    assert 1 <= step < 1000
    assert "SIGTERM" not in str(__import__("signal").getsignal(__import__("signal").SIGTERM))  # handler restored


# -----------------------------------------------------------------------------
# Bad input: one clear message each

def test_missing_data(tmp_path):
    with pytest.raises(SystemExit, match="nothing' does not exist: check the name, or prepare a corpus there"):
        train.main(tiny_run(tmp_path / "nothing", tmp_path / "out"))  # a misspelt data_dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="lacks train.bin, .*prepare.py"):
        train.main(tiny_run(tmp_path / "empty", tmp_path / "out"))


def test_data_from_another_tokenizer(tmp_path):
    data = write_corpus(tmp_path / "d", [[1, 2, 3]] * 4, [[1, 2, 3]] * 2, tokenizer="wordpiece", vocab_size=30522)
    with pytest.raises(SystemExit, match="re-run prepare.py"):
        train.main(tiny_run(data, tmp_path / "out"))


def test_bins_that_do_not_match_their_offsets(tmp_path):
    data = write_corpus(tmp_path / "d", [[1, 2, 3, 4]] * 4, [[1, 2, 3]] * 2)
    np.save(os.path.join(data, "train_docs.npy"), np.array([0, 3, 8, 13, 20], np.int64))  # EOTs are elsewhere
    with pytest.raises(SystemExit, match="re-run prepare.py"):
        train.main(tiny_run(data, tmp_path / "out"))


def test_block_size_longer_than_the_model(counting, tmp_path):
    with pytest.raises(SystemExit, match="positions"):
        train.main(tiny_run(counting, tmp_path / "out", "--block_size=128", "--tokens_per_step=1024"))


def test_batch_that_does_not_divide(counting, tmp_path):
    with pytest.raises(SystemExit, match="tokens_per_step=300 is not a multiple"):
        train.main(tiny_run(counting, tmp_path / "out", "--tokens_per_step=300"))


def test_resume_without_or_with_corrupt_checkpoint(counting, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        train.main(tiny_run(counting, tmp_path / "out", "--init_from=resume"))
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="unreadable"):
        train.main(tiny_run(counting, tmp_path / "out", "--init_from=resume"))


def test_nan_loss_stops_and_keeps_the_checkpoint(counting, tmp_path):
    out = tmp_path / "out"
    train.main(tiny_run(counting, out, "--max_steps=4", "--eval_interval=4"))
    good, log = (out / "ckpt.pt").read_bytes(), (out / "log.jsonl").read_bytes()
    # a huge learning rate turns the weights to NaN in one step; the run it replaces keeps its checkpoint
    # and its log, and this run's log is beside them
    with pytest.raises(SystemExit, match="NaN"):
        train.main(tiny_run(counting, out, "--max_steps=8", "--eval_interval=2", "--overwrite=True",
                            "--learning_rate=1e30", "--warmup_steps=0"))
    assert (out / "ckpt.pt").read_bytes() == good and (out / "log.jsonl").read_bytes() == log
    assert runtime.read_log(out / "log.jsonl.new")[0]["step"] == 0


# -----------------------------------------------------------------------------
# DDP

DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {root!r})
import train
model = train.main(sys.argv[1:])
torch.save(model.state_dict(), os.path.join({out!r}, f"rank{{os.environ.get('RANK', 0)}}.pt"))
"""


@pytest.mark.slow
@pytest.mark.parametrize("nsp, dropout", [(True, 0.0), (False, 0.0), (True, 0.1)])
@pytest.mark.slow
def test_ddp_matches_one_process(counting, tmp_path, nsp, dropout):
    # the same global batch of 16 sequences: 2 processes x 1 micro-step, or 1 process x 2 micro-steps.
    # Without NSP the pooler and NSP head get no gradient: DDP fails on step 2 unless they are frozen.
    # Dropout is seeded per micro-batch from (step, shard), so its masks agree too
    script = tmp_path / "run.py"
    common = ("--max_steps=4", "--eval_interval=4", f"--dropout={dropout}", "--tokens_per_step=512", f"--nsp={nsp}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name, launcher in (("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]),
                           ("single", [sys.executable])):
        out = tmp_path / name
        os.makedirs(out)
        script.write_text(DDP_SCRIPT.format(root=ROOT, out=str(out)))
        r = subprocess.run([*launcher, str(script), *tiny_run(counting, out, *common)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert ("grad_accum 1 x world_size 2" if name == "ddp" else "grad_accum 2 x world_size 1") in r.stdout
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    for k in single:
        assert torch.equal(rank0[k], rank1[k]), f"ranks disagree on {k}"
        # they differ only in the order of the gradient sums (on this machine not at all)
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-5, atol=1e-6, msg=f"DDP and one process differ on {k}")
    (ddp_eval,), (single_eval,) = ([r for r in read_log(tmp_path / d) if "val_loss" in r and r["step"] == 4] for d in ("ddp", "single"))
    assert abs(ddp_eval["val_loss"] - single_eval["val_loss"]) < 1e-4


def test_resume_may_move_to_longer_sequences_and_says_so(counting, tmp_path, capsys):
    # BERT's second phase: the same run goes on at a longer block_size; a new learning rate is refused
    out = tmp_path / "out"
    train.main(tiny_run(counting, out, "--max_steps=6", "--run_steps=3", "--eval_interval=3"))
    train.main(tiny_run(counting, out, "--max_steps=6", "--eval_interval=3", "--init_from=resume",
                        "--block_size=64", "--tokens_per_step=512"))
    assert "block_size=64 (was 32)" in capsys.readouterr().out
    ckpt = runtime.load_checkpoint(str(out))
    assert ckpt["step"] == 6 and ckpt["config"]["block_size"] == 64
    with pytest.raises(SystemExit, match="trained with learning_rate=0.003"):
        train.main(tiny_run(counting, out, "--max_steps=8", "--init_from=resume", "--learning_rate=1e-3"))


def test_resume_takes_its_data_from_the_checkpoint_not_the_config_file(counting, tmp_path, capsys):
    """The command that started a run, with --init_from=resume, continues it, even when the run was
    pointed at its data with a flag and the config file names another corpus."""
    out = tmp_path / "out"
    config = tmp_path / "cfg.py"
    config.write_text(f"data_dir = {str(tmp_path / 'another-corpus')!r}\nlearning_rate = 1e-2\n")
    flags = [f for f in tiny_run(counting, out, "--max_steps=4", "--eval_interval=2") if not f.startswith("--learning")]
    train.main([str(config), *flags, "--run_steps=2"])  # the flag's data_dir wins over the config's
    flags = [f for f in flags if not f.startswith("--data_dir")]
    config.write_text(f"data_dir = {str(tmp_path / 'another-corpus')!r}\nlearning_rate = 5e-3\n")
    train.main([str(config), *flags, "--init_from=resume"])  # neither the config's data_dir nor its new recipe
    ckpt = runtime.load_checkpoint(str(out))
    assert ckpt["step"] == 4 and ckpt["config"]["data_dir"] == str(counting) and ckpt["config"]["learning_rate"] == 1e-2
    # a flag may move it (the data moved), and the run says so
    moved = shutil.copytree(counting, tmp_path / "moved")
    train.main([*flags, f"--data_dir={moved}", "--max_steps=5", "--init_from=resume"])
    assert f"data_dir={str(moved)!r} (was {str(counting)!r})" in capsys.readouterr().out
    # a run that reached its end says so, and changes nothing
    before = (out / "ckpt.pt").read_bytes()
    train.main([*flags, f"--data_dir={moved}", "--max_steps=5", "--init_from=resume"])
    assert "nothing to do" in capsys.readouterr().out and (out / "ckpt.pt").read_bytes() == before
