"""
Training curves of one run or several on one figure: train and validation loss, MLM accuracy and the
learning rate, from the log.jsonl that train.py writes beside ckpt.pt (finetune.py's log works too:
its validation metrics get a panel of their own).

    python plot.py out-tiny                              # -> out-tiny/curves.png
    python plot.py out-tiny out-small --out=compare.png  # one colour per run
    python plot.py out-tiny out-small --x=tokens         # against tokens seen: runs with different batch sizes line up

Needs matplotlib (pip install matplotlib), which nothing else here does.
"""
import argparse
import os

import runtime

# panel title, the training records' key, the evaluation records' keys
PANELS = [("loss", "loss", ["val_loss"]), ("MLM accuracy", "mlm_acc", ["val_mlm_acc"]), ("learning rate", "lr", [])]
SHOWN = {"val_loss", "val_mlm_acc", "val_mlm_loss", "val_nsp_loss", "val_nsp_acc"}  # train.py's evaluation keys


def read_log(run):
    """(the run's name, its records in order). run: an out_dir, or the log.jsonl itself."""
    path = run if run.endswith(".jsonl") else os.path.join(run, "log.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"no log at {path}: plot.py reads the log.jsonl that train.py and finetune.py write in "
                         "their out_dir")
    records = runtime.read_log(path)
    if not records:
        raise SystemExit(f"{path} holds no records yet: the first is written at step 0 (train.py) or after "
                         "log_interval steps (finetune.py)")
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) if path.endswith("log.jsonl") else path
    return name, records


def points(records, key, x):
    """The (x, value) pairs of the records that have both, as two lists."""
    pts = [(r[x], r[key]) for r in records if r.get(key) is not None and r.get(x) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def panels(runs):
    """The PANELS that some run has data for, and one for other validation metrics (finetune.py's)."""
    keys = {k for _, records in runs for r in records for k in r}
    out = [p for p in PANELS if {p[1], *p[2]} & keys]
    extra = sorted(k for k in keys if k.startswith("val_") and k not in SHOWN)
    return out + ([("validation", None, extra)] if extra else [])


def figure(runs, x="step"):
    """A panel per quantity, side by side, 500 x 400 pixels each; a colour per run, training records as
    lines, evaluations as dashed lines with dots."""
    try:
        import matplotlib  # optional: only this script draws
    except ImportError:
        raise SystemExit("plot.py needs matplotlib: pip install matplotlib")
    matplotlib.use("Agg")  # to a file; no display needed
    import matplotlib.pyplot as plt

    shown = panels(runs)
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), dpi=100, squeeze=False)
    for ax, (title, train_key, val_keys) in zip(axes[0], shown):
        for i, (name, records) in enumerate(runs):
            lines = [(train_key, "train" if val_keys else "", dict(lw=1))] if train_key else []
            lines += [(k, "val" if len(val_keys) == 1 else k.removeprefix("val_"),
                       dict(ls=("--", ":", "-.")[j % 3], marker="o", ms=3)) for j, k in enumerate(val_keys)]
            for key, what, style in lines:
                xs, ys = points(records, key, x)
                if xs:
                    ax.plot(xs, ys, color=f"C{i}", label=f"{name} {what}".rstrip(), **style)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot the training curves of runs (their log.jsonl) on one figure.")
    parser.add_argument("runs", nargs="+", help="out_dir folders (or log.jsonl files) of train.py or finetune.py")
    parser.add_argument("--out", default="", help="the PNG to write (default: curves.png in the first run's folder)")
    parser.add_argument("--x", choices=("step", "tokens"), default="step",
                        help="the x axis: optimizer steps (default), or tokens seen (train.py logs them)")
    args = parser.parse_args(argv)
    runs = [read_log(r) for r in args.runs]
    for name, records in runs:
        if args.x == "tokens" and not any("tokens" in r for r in records):
            raise SystemExit(f"{name}'s log has no token counts (finetune.py's, or train.py's from before they were "
                             "logged): plot it against steps, without --x=tokens")
    fig = figure(runs, args.x)
    first = args.runs[0] if os.path.isdir(args.runs[0]) else os.path.dirname(args.runs[0]) or "."
    args.out = args.out or os.path.join(first, "curves.png")  # beside the run, not wherever plot.py was started
    runtime.write_atomic(args.out, lambda tmp: fig.savefig(tmp, format="png"))  # a reader never sees half a PNG
    print(f"wrote {args.out}: {', '.join(name for name, _ in runs)}; "
          f"{', '.join(ax.get_title() for ax in fig.axes)} against {args.x}")


if __name__ == "__main__":
    runtime.run(main)
