"""bench.py end to end on a very small shape: a smoke test of both code paths, no timing asserted."""
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_compare_hf_runs():
    out = subprocess.run([sys.executable, "bench.py", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=2",
                          "--block_size=16", "--warmup=1", "--steps=2", "--compare_hf=True", "--profile=True"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert ("; malloc keeps freed memory" in out.stdout) == (platform.libc_ver()[0] == "glibc")  # as train.py on a CPU
    rows = re.findall(r"^\s*(nanoBERT|transformers \S+)\s+([\d.]+)\s+(\d+)\s+(n/a|[\d.]+%)\s+(\d+)$", out.stdout, re.M)
    assert [r[0].split()[0] for r in rows] == ["nanoBERT", "transformers"], out.stdout
    assert all(float(r[1]) > 0 and int(r[2]) > 0 for r in rows)
    assert rows[0][3] == "n/a"  # no made-up MFU on a CPU
    assert re.search(r"speed-up over transformers: \d+\.\d\dx", out.stdout)
    assert re.search(r"% of a large float32 matmul", out.stdout)
    # the profile: our step's ops by self time, the matmuls among them
    assert re.search(r"^profile: [\d.]+ ms of cpu time per step", out.stdout, re.M)
    ops = re.findall(r"^\s+[\d.]+ ms\s+[\d.]+%\s+\d+x  (\S+)$", out.stdout, re.M)
    assert 5 <= len(ops) <= 15 and {"aten::mm", "aten::addmm"} <= set(ops), out.stdout


def test_bench_rejects_unknown_setting():
    out = subprocess.run([sys.executable, "bench.py", "--n_layers=1"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown setting 'n_layers'" in out.stderr
