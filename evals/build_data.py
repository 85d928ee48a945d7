"""The data of the lm-evaluation-harness tasks in this folder, built from the corpus (derived data: not in git).

    python evals/build_data.py                 # from data/tinyshakespeare/input.txt into evals/data/
    lm_eval --model local-completions --tasks shakespeare_val,shakespeare_next_line --include_path evals ...

- shakespeare_val.jsonl: the validation split (the last 10% of the corpus, the split chargpt trains beside) as one
  document, for a loglikelihood_rolling task: bits per byte over the same characters `src.train test` scores.
- shakespeare_next_line.jsonl: multiple choice from the validation split: a few lines of a speech, then the line that
  follows it among three other lines of the split (seeded, so every build is the same).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def val_split(text: str, train_fraction: float) -> str:
    return text[int(train_fraction * len(text)) :]  # the data module's split, in characters (a char tokenizer)


def next_line_docs(text: str, count: int, context_lines: int, seed: int, longest: int) -> list[dict]:
    lines = [line for line in text.split("\n") if line.strip()]
    # lines with something to tell apart, that leave the context room in the model's window
    candidates = sorted({line for line in lines if 20 <= len(line) <= longest})
    rng = random.Random(seed)
    starts = list(range(len(lines) - context_lines))
    rng.shuffle(starts)
    docs = []
    for start in starts:
        context, answer = lines[start : start + context_lines], lines[start + context_lines]
        others = [line for line in rng.sample(candidates, min(len(candidates), 4)) if line != answer][:3]
        if not 20 <= len(answer) <= longest or len(others) < 3:
            continue
        choices = [answer, *others]
        rng.shuffle(choices)
        docs.append({"context": "\n".join(context) + "\n", "choices": choices, "label": choices.index(answer)})
        if len(docs) == count:
            break
    return docs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=HERE.parent / "data" / "tinyshakespeare" / "input.txt")
    p.add_argument("--out", type=Path, default=HERE / "data", help="where the .jsonl files go")
    p.add_argument("--train_fraction", type=float, default=0.9, help="as --data.train_fraction")
    p.add_argument("--questions", type=int, default=200, help="documents of the multiple-choice task")
    p.add_argument("--val_chars", type=int, default=None, help="score only the first N characters of the split")
    p.add_argument("--longest", type=int, default=80, help="the longest line a choice may be (under the context)")
    a = p.parse_args()
    if not a.corpus.is_file():
        raise SystemExit(f"build_data: no corpus at {a.corpus}: python -m src.train fit downloads it; or pass --corpus")
    val = val_split(a.corpus.read_text(encoding="utf-8"), a.train_fraction)[: a.val_chars]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "shakespeare_val.jsonl").write_text(json.dumps({"text": val}) + "\n", encoding="utf-8")
    docs = next_line_docs(val, a.questions, context_lines=3, seed=1337, longest=a.longest)
    with open(a.out / "shakespeare_next_line.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(doc) + "\n" for doc in docs)
    print(f"{a.out}: the validation split ({len(val):,} characters) and {len(docs)} next-line questions")


if __name__ == "__main__":
    main()
