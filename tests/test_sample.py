"""sample.py: how masks are encoded, the CLI end to end on a tiny trained checkpoint and on a tiny
HuggingFace (WordPiece) checkpoint, and one clear message for each bad input."""
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import sample
import tokenizer
from model import BertConfig, BertForPreTraining
from runtime import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["one two three four five six.", "red green blue black white pink."]


def run_sample(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture(scope="module")
def gpt2():
    return tokenizer.get_tokenizer()


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, gpt2):
    """A 2-layer BERT trained until it fills in any two masked words of SENTENCES. The two sentences
    share their positions, so a right answer needs the context, and a stray token shifts everything."""
    torch.manual_seed(0)
    data = torch.tensor([[gpt2.cls] + gpt2.encode(s) + [gpt2.sep] for s in SENTENCES])  # (2, 9)
    model = BertForPreTraining(BertConfig(max_positions=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    optimizer = model.configure_optimizers(0.0, 3e-3, (0.9, 0.99), "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small gain nothing from threads, and on a busy 2-core box lose 5x
    try:
        for step in range(300):
            x = data[torch.arange(16) % 2]
            pos = torch.rand(16, 7).argsort(1)[:, :2] + 1  # two of the 7 tokens between [CLS] and [SEP]
            masked = torch.zeros_like(x, dtype=torch.bool).scatter_(1, pos, True)
            _, _, loss = model(torch.where(masked, gpt2.mask, x), mlm_labels=torch.where(masked, x, -100),
                               max_predictions=2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.1, "the tiny model did not learn its two sentences"
    out_dir = tmp_path_factory.mktemp("out")
    save_checkpoint({"kind": "pretraining", "model": model.state_dict(), "model_config": asdict(model.config),
                     "optimizer": optimizer.state_dict(), "step": 300, "best_val_loss": loss.item(),
                     "config": {"out_dir": str(out_dir)}, "tokenizer": "gpt2"},
                    os.path.join(out_dir, "ckpt.pt"))
    return str(out_dir)


# -----------------------------------------------------------------------------
# GPT-2 BPE: a [MASK] is one whole token, the space before it included, exactly as in pretraining

@pytest.mark.parametrize("masked, filled, shown", [
    ("[MASK] sat on the mat.", "cat sat on the mat.", ["[MASK]", " sat", " on", " the", " mat", "."]),
    ("the [MASK] sat", "the cat sat", ["the", "[MASK]", " sat"]),
    ("the [MASK] [MASK] sat", "the big cat sat", ["the", "[MASK]", "[MASK]", " sat"]),
    ('he said "[MASK]", then [MASK].', 'he said "hello", then left.',
     ["he", " said", ' "', "[MASK]", '",', " then", "[MASK]", "."]),
    ("(the [MASK])!", "(the cat)!", ["(", "the", "[MASK]", ")!"]),
])
def test_mask_takes_the_space_before_it(gpt2, masked, filled, shown):
    ids = gpt2.encode_masked(masked)
    assert [gpt2.decode([i]) for i in ids] == shown
    # the same tokens as the filled-in text, one word per mask: what the model saw in pretraining
    ref = gpt2.encode(filled)
    assert len(ids) == len(ref)
    assert all(i == r for i, r in zip(ids, ref) if i != gpt2.mask)
    assert all(gpt2.is_text[r] for i, r in zip(ids, ref) if i == gpt2.mask)


def test_only_text_tokens_are_guessed(gpt2, ckpt_dir):
    model, tok = sample.load_model(ckpt_dir)
    with torch.no_grad():  # make [MASK], [PAD] and an unused row of the padded vocab the model's favourites
        model.mlm.bias[[gpt2.mask, gpt2.pad, gpt2.rows - 1]] = 100.0
    [[(ids, probs)]] = sample.fill_mask(model, tok, sample.encode_texts(tok, ["one [MASK]"], 16), top_k=50)
    assert all(tok.is_text[i] for i in ids) and len(ids) == 50
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_output_keeps_one_line_per_item(gpt2):
    text = "caf\u00e9\t[MASK] ok"
    row = sample.encode_texts(gpt2, [text], 16)[0]
    newline, hug = gpt2.encode("\n"), gpt2.encode(" \U0001F917")  # the emoji is 3 tokens, each part of it
    out = sample.format_result(gpt2, text, row, [([newline[0], hug[0]], [0.9, 0.1])]).splitlines()
    assert out == ["> caf\u00e9\\t[MASK] ok", "  [MASK] 1: '\\n' 0.900  ' \ufffd' 0.100",
                   "  filled: caf\u00e9\\t\\n ok"]


def test_batched_equals_one_at_a_time(gpt2, ckpt_dir):
    # rows of different lengths and mask counts in one padded batch give the same answers as alone
    model, tok = sample.load_model(ckpt_dir)
    rows = sample.encode_texts(tok, ["one [MASK] three [MASK] five six.", "red [MASK]", "[MASK] two"], 16)
    together = sample.fill_mask(model, tok, rows, top_k=3)
    alone = [p for r in rows for p in sample.fill_mask(model, tok, [r], top_k=3)]
    assert [len(p) for p in together] == [2, 1, 1]
    for a, b in zip(together, alone):
        for (ids_a, probs_a), (ids_b, probs_b) in zip(a, b):
            assert ids_a == ids_b and probs_a == pytest.approx(probs_b, abs=1e-5)


# -----------------------------------------------------------------------------
# The CLI end to end

def test_cli_fills_in_our_checkpoint(ckpt_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("red green [MASK] black white pink.\n\n[MASK] two three four five six.\n")
    r = run_sample(f"--out_dir={ckpt_dir}", "--text", "one two [MASK] four five six.",
                   "--text", "one [MASK] three [MASK] five [MASK].", "--file", str(texts), "--top_k", "3")
    assert r.returncode == 0, r.stderr
    blocks = r.stdout.strip().split("\n\n")
    assert len(blocks) == 4
    # the same position needs " three" in one sentence and " blue" in the other; at the start no space
    assert "[MASK] 1: ' three'" in blocks[0] and "filled: one two three four five six." in blocks[0]
    assert "[MASK] 1: ' two'" in blocks[1] and "[MASK] 2: ' four'" in blocks[1] and "[MASK] 3: ' six'" in blocks[1]
    assert "filled: one two three four five six." in blocks[1]
    assert "[MASK] 1: ' blue'" in blocks[2] and "filled: red green blue black white pink." in blocks[2]
    assert "[MASK] 1: 'one'" in blocks[3] and "filled: one two three four five six." in blocks[3]
    assert blocks[0].splitlines()[1].count("'") == 2 * 3  # top_k=3 guesses, each quoted


def test_cli_wordpiece_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")  # test-only: writes a real HuggingFace checkpoint
    pytest.importorskip("tokenizers")
    words = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
             "dog", ".", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words) + 2, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=16)
    model = transformers.BertForPreTraining(config)
    with torch.no_grad():  # "cat" wins among words; specials and the 2 rows past the vocabulary would win overall
        bias = model.cls.predictions.bias
        bias[words.index("cat")] = 50.0
        bias[[words.index("[PAD]"), words.index("[unused0]"), words.index("[MASK]"), len(words) + 1]] = 100.0
    model.save_pretrained(tmp_path)

    r = run_sample(f"--init_from={tmp_path}", "--text", "The [MASK] sat on the [MASK].", "--top_k=2")
    assert r.returncode == 0, r.stderr
    assert "[MASK] 1: 'cat' 1.000" in r.stdout and "[MASK] 2: 'cat' 1.000" in r.stdout
    assert "filled: the cat sat on the cat." in r.stdout  # uncased vocabulary: lower-cased

    r = run_sample(f"--init_from={tmp_path}", "--text", " ".join(["the"] * 15) + " [MASK]")
    assert r.returncode != 0 and "max_positions=16" in r.stderr


# -----------------------------------------------------------------------------
# Bad input: one clear message each, non-zero exit, no traceback

def test_cli_text_without_mask(ckpt_dir):
    r = run_sample(f"--out_dir={ckpt_dir}", "--text", "the cat sat")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "--text 1 has no [MASK] to fill in: 'the cat sat'"


def test_cli_unknown_hub_name_offline():
    r = run_sample("--init_from=no-such-org/no-such-bert", "--text", "the [MASK] sat", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "could not get 'no-such-org/no-such-bert'" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--text", "one " * 20 + "[MASK]"],
     "--text 1 is 23 tokens with [CLS] and [SEP], more than this model's max_positions=16: shorten it"),
    (["--text", "one [MASK]", "--text", "no mask here"], "--text 2 has no [MASK]"),
    (["--file", "{tmp}/texts.txt"], "line 3 of {tmp}/texts.txt has no [MASK]"),
    (["--file", "{tmp}/missing.txt"], "cannot read --file {tmp}/missing.txt"),
    (["--file", "{tmp}/latin1.txt"], "--file {tmp}/latin1.txt is not UTF-8 text"),
    (["--out_dir", "{tmp}", "--text", "one [MASK]"], "no checkpoint at {tmp}/ckpt.pt"),
    (["--init_from", "{tmp}/missing", "--text", "one [MASK]"], "no folder {tmp}/missing here"),
    pytest.param(["--device", "cuda", "--text", "one [MASK]"], "torch sees no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_bad_input(ckpt_dir, tmp_path, args, message):
    (tmp_path / "texts.txt").write_text("one [MASK]\n\nred green blue\n")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 [MASK]\n".encode("latin-1"))
    args = [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as e:
        sample.main([f"--out_dir={ckpt_dir}", *args])
    assert message.format(tmp=tmp_path) in str(e.value.code)
