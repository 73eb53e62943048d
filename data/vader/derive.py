"""Re-derive data/vader/<domain>.tsv from the vaderSentiment 3.3.2 source distribution (needs pip + network).

    python data/vader/derive.py [--sdist vaderSentiment-3.3.2.tar.gz]

Checks the sdist's sha256, reads the four *_GroundTruth.txt files from additional_resources/hutto_ICWSM_2014.tar.gz
and writes id, valence, text per line (CRLF stripped, quoted only where the csv module must). Deterministic.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edge_lorax.builder.data import derive_vader  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="a local vaderSentiment-3.3.2.tar.gz instead of pip download")
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    print(derive_vader(args.dest, args.sdist))
