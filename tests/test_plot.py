"""plot.py: the curves of one run or several from their log.jsonl, and one clear message for a missing or
empty log and for a missing matplotlib."""
import json
import os
import struct
import subprocess
import sys

import pytest

import plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pretraining_log(folder, tokens_per_step=4096, steps=100, with_tokens=True):
    """A log as train.py writes it: an evaluation every 25 steps, a training record every 5."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        for step in range(0, steps + 1, 5):
            tokens = {"tokens": step * tokens_per_step} if with_tokens else {}
            if step % 25 == 0:
                f.write(json.dumps({"step": step, **tokens, "val_loss": 11 - step / 20, "val_mlm_loss": 10 - step / 20,
                                    "val_mlm_acc": step / 500, "val_nsp_loss": 0.69, "val_nsp_acc": 0.5}) + "\n")
            if step:
                f.write(json.dumps({"step": step, **tokens, "loss": 11.2 - step / 20, "mlm_loss": 10.3, "mlm_acc": step / 600,
                                    "nsp_loss": 0.7, "nsp_acc": 0.5, "lr": 1e-3 * min(1, step / 20), "ms_per_step": 300.0,
                                    "tokens_per_sec": 1e4, "mfu": None}) + "\n")
        f.write('{"step": 105, "lo')  # a line cut short by a crash
    return str(folder)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])  # IHDR: width, height


def test_two_runs_on_one_figure(tmp_path):
    pytest.importorskip("matplotlib")  # optional: only plot.py draws
    a = pretraining_log(tmp_path / "out-a")
    b = pretraining_log(tmp_path / "out-b", tokens_per_step=8192, steps=50)
    out = tmp_path / "curves.png"
    plot.main([a, b, f"--out={out}"])
    assert png_size(out) == (1500, 400) and os.path.getsize(out) > 20_000  # three panels of 500 x 400
    fig = plot.figure([plot.read_log(a), plot.read_log(b)])
    loss, acc, lr = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss", "MLM accuracy", "learning rate"]
    lines = {l.get_label(): l for l in loss.get_lines()}
    assert sorted(lines) == ["out-a train", "out-a val", "out-b train", "out-b val"]
    assert list(lines["out-a val"].get_xdata()) == [0, 25, 50, 75, 100]
    assert list(lines["out-a val"].get_ydata()) == [11, 9.75, 8.5, 7.25, 6]
    assert list(lines["out-b train"].get_xdata()) == list(range(5, 51, 5))
    assert lines["out-a train"].get_color() != lines["out-b train"].get_color()
    assert [l.get_label() for l in lr.get_lines()] == ["out-a", "out-b"]
    fig = plot.figure([plot.read_log(a), plot.read_log(b)], x="tokens")
    assert list(fig.axes[0].get_lines()[3].get_xdata()) == [0, 25 * 8192, 50 * 8192]  # out-b val, in tokens


def test_finetune_log_gets_a_validation_panel(tmp_path):
    pytest.importorskip("matplotlib")  # optional: only plot.py draws
    folder = tmp_path / "out-ft"
    folder.mkdir()
    records = [{"step": 10, "epoch": 1, "loss": 0.7, "lr": 2e-5}, {"step": 20, "epoch": 1, "val_accuracy": 0.6, "val_f1": 0.5},
               {"step": 30, "epoch": 2, "loss": 0.5, "lr": 1e-5}, {"step": 40, "epoch": 2, "val_accuracy": 0.7, "val_f1": 0.65}]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = plot.figure([plot.read_log(str(folder))])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "learning rate", "validation"]
    assert sorted(l.get_label() for l in fig.axes[2].get_lines()) == ["out-ft accuracy", "out-ft f1"]
    with pytest.raises(SystemExit, match="no token counts"):
        plot.main([str(folder), "--x=tokens", f"--out={tmp_path / 'x.png'}"])


def test_missing_and_empty_logs(tmp_path):
    with pytest.raises(SystemExit, match="no log at .*log.jsonl: plot.py reads the log.jsonl"):
        plot.main([str(tmp_path / "nothing")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.jsonl").write_text('{"step": 0, "val')
    with pytest.raises(SystemExit, match="holds no records yet"):
        plot.main([str(tmp_path / "empty"), f"--out={tmp_path / 'x.png'}"])
    assert not os.path.exists(tmp_path / "x.png")


def test_without_matplotlib(tmp_path):
    run = pretraining_log(tmp_path / "out")
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['plot.py', sys.argv[1], '--out=' + sys.argv[2]]; "
            "import runpy; runpy.run_path('plot.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, run, str(tmp_path / "c.png")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == "plot.py needs matplotlib: pip install matplotlib"
    assert not os.path.exists(tmp_path / "c.png")


def test_the_default_picture_goes_beside_the_first_run(tmp_path, monkeypatch):
    folder = tmp_path / "out-tiny"
    folder.mkdir()
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 0, "tokens": 0, "val_loss": 9.0, "val_mlm_loss": 9.0, "val_mlm_acc": 0.0},
        {"step": 1, "tokens": 8, "loss": 8.0, "mlm_loss": 8.0, "mlm_acc": 0.1, "lr": 1e-3})))
    monkeypatch.chdir(tmp_path)
    plot.main(["out-tiny"])
    assert os.listdir(tmp_path) == ["out-tiny"] and (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"
