"""
Which vocabulary? Tokens per word of held-out text (fertility) for GPT-2's BPE against byte-level BPEs
trained by prepare.py (tokenizer.train_bpe) at several sizes, on the English transfer corpus and on a
German one, plus the German corpus and a small German task for running the whole pipeline on it.

    python experiments/transfer.py data          # the English corpus, data/transfer/corpus
    python experiments/vocab.py german           # German man pages -> data/german/corpus + task CSVs
    python experiments/vocab.py fertility        # the table, also written to data/fertility.json

Every 100th paragraph of a corpus is held out, as prepare.py holds out validation documents; the
vocabularies are trained on the rest. A word is a run of non-space characters.
Needs the Debian package manpages-de (German man pages) besides the transfer experiment's packages.
"""
import argparse
import glob
import json
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the shared modules
import tokenizer as tokenization  # noqa: E402
from transfer_data import is_prose, one_line, paragraphs, render_man, write_csv  # noqa: E402

GERMAN_MAN = "/usr/share/man/de/man[1-8]/*"  # manpages-de
SIZES = (8192, 16384, 32768)
SECTIONS = {"1": "Befehle", "5": "Dateiformate", "8": "Systemverwaltung"}  # the task's classes, by man section


def german(out):
    """data/german/corpus/*.txt (one rendered page a file) and task/{train,val,test}.csv: a prose paragraph
    labelled by its page's section; train, val and test come from different pages."""
    pages = sorted(glob.glob(GERMAN_MAN))
    if not pages:
        raise SystemExit("no German man pages here: apt-get install manpages-de")
    os.makedirs(f"{out}/corpus", exist_ok=True)
    os.makedirs(f"{out}/task", exist_ok=True)
    rng = random.Random(0)
    rows = {"train": [], "val": [], "test": []}
    t0 = time.time()
    for n, page in enumerate(pages):
        name = os.path.basename(page).split(".gz")[0]
        text = render_man(page)
        section = os.path.basename(os.path.dirname(page)).removeprefix("man")
        split = rng.choices(["train", "val", "test"], (0.6, 0.2, 0.2))[0]
        if section in SECTIONS:
            rows[split] += [{"text": one_line(p), "label": SECTIONS[section]} for p in paragraphs(text) if is_prose(p)]
        if split == "train" or section not in SECTIONS:  # the task's val and test pages stay out of the corpus
            with open(f"{out}/corpus/{name}.txt", "w", encoding="utf-8") as f:
                f.write(text + "\n")
        if n % 500 == 0:
            print(f"{n:,} of {len(pages):,} pages, {time.time() - t0:.0f} s", flush=True)
    for split, r in rows.items():
        rng.shuffle(r)
        write_csv(f"{out}/task/{split}.csv", r)
        print(f"{split}: {len(r):,} rows " + ", ".join(f"{c} {sum(x['label'] == c for x in r)}" for c in SECTIONS.values()))


def corpus_paragraphs(folder):
    for path in sorted(glob.glob(f"{folder}/*.txt")):
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from (p.strip() for p in paragraphs(f.read()))


def fertility(corpora):
    result = {}
    for name, folder in corpora.items():
        docs = list(corpus_paragraphs(folder))
        if not docs:
            raise SystemExit(f"no text in {folder}: make it first (see this script's docstring)")
        held = docs[99::100]
        train = [d for i, d in enumerate(docs) if i % 100 != 99]
        words = sum(len(d.split()) for d in held)
        row = {"paragraphs": len(docs), "held-out words": words}
        gpt2 = tokenization.GPT2Tokenizer()
        row["gpt2"] = sum(map(len, gpt2.encode_batch(held))) / words
        for size in SIZES:
            t0 = time.time()
            tok = tokenization.train_bpe((train[i:i + 1000] for i in range(0, len(train), 1000)), size, len(train))
            row[f"{size // 1024}k"] = sum(map(len, tok.encode_batch(held))) / words
            print(f"{name}: {size:,} trained in {time.time() - t0:.0f} s", flush=True)
        result[name] = row
    print(f"\ntokens per word of held-out text (every 100th paragraph), vocabularies trained on the rest")
    print(f"| corpus | words held out | GPT-2 | " + " | ".join(f"{s // 1024}k" for s in SIZES) + " |")
    print("|---|---|---|" + "---|" * len(SIZES))
    for name, row in result.items():
        cells = [f"{row[f'{s // 1024}k']:.3f} ({row[f'{s // 1024}k'] / row['gpt2'] - 1:+.0%})" for s in SIZES]
        print(f"| {name} | {row['held-out words']:,} | {row['gpt2']:.3f} | " + " | ".join(cells) + " |")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["german", "fertility"])
    p.add_argument("--data", default="data", help="where data/transfer and data/german are")
    args = p.parse_args(argv)
    if args.command == "german":
        german(f"{args.data}/german")
    else:
        result = fertility({"English (transfer corpus)": f"{args.data}/transfer/corpus",
                            "German (man pages)": f"{args.data}/german/corpus"})
        with open(f"{args.data}/fertility.json", "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
