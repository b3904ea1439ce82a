"""bench.py end to end on a very small shape: a smoke test of both code paths, no timing asserted."""
import os
import platform
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_compare_hf_runs():
    out = subprocess.run([sys.executable, "bench.py", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=2",
                          "--block_size=16", "--warmup=1", "--steps=2", "--compare_hf=True", "--profile=True"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert ("; malloc keeps freed memory" in out.stdout) == (platform.libc_ver()[0] == "glibc")  # as train.py on a CPU
    # one row of figures for ours and one for transformers, however the table is laid out
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith(("nanoBERT", "transformers"))]
    assert [r[0] for r in rows] == ["nanoBERT", "transformers"], out.stdout
    assert all(any(re.fullmatch(r"\d[\d,]*(\.\d+)?", w) and float(w.replace(",", "")) > 0 for w in r) for r in rows)
    assert "n/a" in rows[0]  # no made-up MFU on a CPU
    assert re.search(r"speed-up over transformers: \d+\.\d\dx", out.stdout)
    assert re.search(r"% of a large float32 matmul", out.stdout)
    # the profile: our step's ops by self time, the matmuls among them
    assert re.search(r"^profile: [\d.]+ ms of cpu time per step", out.stdout, re.M)
    ops = re.findall(r"^\s+[\d.]+ ms\b.*\s(\S+)$", out.stdout, re.M)
    assert 5 <= len(ops) <= 15 and {"aten::mm", "aten::addmm"} <= set(ops), out.stdout


def test_bench_rejects_unknown_setting():
    out = subprocess.run([sys.executable, "bench.py", "--n_layers=1"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown setting 'n_layers'" in out.stderr


def test_bench_compares_two_vocabularies(capsys):
    """--compare_vocab_size times ours with a second embedding table in the same run, which is how the
    README's vocabulary speed-up is measured; no timing is asserted."""
    sys.path.insert(0, ROOT)
    import bench
    bench.main(["--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=2", "--block_size=16", "--warmup=0",
                "--steps=1", "--vocab_size=1024", "--compare_vocab_size=512", "--device=cpu"])
    out = capsys.readouterr().out
    assert "vocab 1024;" in out and re.search(r"nanoBERT, vocab 512 +\d", out)
    assert re.search(r"vocab 512 against 1024: \d+\.\d\dx the tokens per second", out)
    with pytest.raises(SystemExit, match="compare_vocab_size must be 0 or at least 128"):
        bench.main(["--compare_vocab_size=100"])
