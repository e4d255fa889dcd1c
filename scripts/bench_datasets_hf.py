"""The Hugging Face half of scripts/bench-datasets: iterate the same rows with PyPI
`datasets` at batch_size=32 and print rows per second, one JSON object per line.

    python bench_datasets_hf.py ROWS.jsonl CACHE_DIR [BATCH]

The source is loaded once into CACHE_DIR (Arrow files, memory-mapped by `datasets`); the
timed part is one full iteration, first in the default (Python) format, then with the
`arrow` format (pyarrow tables, no conversion to Python objects). Each batch's text is
touched (its total length) so that the rows are read.
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import datasets  # noqa: E402
import pyarrow.compute as pc  # noqa: E402


def main() -> None:
    source, cache_dir = sys.argv[1], sys.argv[2]
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=source, split="train", cache_dir=cache_dir)
    out = {"rows": ds.num_rows, "batch": batch, "datasets": datasets.__version__}

    start = time.perf_counter()
    n = 0
    chars = 0
    for b in ds.iter(batch_size=batch):
        n += len(b["id"])
        chars += sum(len(t) for t in b["text"])
    secs = time.perf_counter() - start
    out.update(python_s=secs, python_rows_s=n / secs, python_chars=chars)

    arrow = ds.with_format("arrow")
    start = time.perf_counter()
    n = 0
    chars = 0
    for t in arrow.iter(batch_size=batch):
        n += t.num_rows
        chars += pc.sum(pc.utf8_length(t["text"])).as_py() or 0
    secs = time.perf_counter() - start
    out.update(arrow_s=secs, arrow_rows_s=n / secs)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
