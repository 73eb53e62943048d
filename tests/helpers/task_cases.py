"""Bad (and formerly mishandled) task files for formats.tasks: each case is a file name, its bytes, read_task's
keyword arguments and the fragments its one-line refusal must hold (None: the file must load). Plain data, no
edge_lorax import, so a script can replay the cases on another checkout (the issue 25 before -> after table).
"""

import json

GOOD = [("a fine film", "pos"), ("a dull film", "neg")] * 6


def csv_text(rows, header="text,label") -> str:
    return header + "\n" + "".join(",".join(r) + "\n" for r in rows)


def jsonl_text(objects) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects)


def _good_objects(n: int = 10) -> list:
    return [{"text": t, "label": lab} for t, lab in GOOD[:n]]


def _many_numbers() -> str:
    return csv_text([(f"review {i}", f"{(i % 40) / 10:.1f}") for i in range(120)])


def _cases() -> list:
    """(id, file name, content (str: UTF-8, bytes: as is), read_task kwargs, fragments | None)."""
    return _label_cases() + _json_cases() + _file_cases()


def _label_cases() -> list:
    """Labels and columns of delimited files."""
    return [
        ("duplicate-column", "dup.csv", "text,label,label\n" + "".join(f"{t},{lab},{lab == 'pos'}\n" for t, lab in GOOD), {},
         ["dup.csv:1:", "'label' appears twice", "rename"]),
        ("extra-fields", "extra.csv", csv_text(GOOD[:4] + [("a film", "pos", "surplus")] + GOOD[4:]), {},
         ["extra.csv:6:", "3 fields, the header has 2", "quote"]),
        ("short-row", "short.csv", csv_text(GOOD[:3] + [("just text",)] + GOOD[3:]), {},
         ["short.csv:5:", "1 fields, the header has 2"]),
        ("ragged-tsv", "rag.tsv", "text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in GOOD) + "a\tb\tc\n", {},
         ["rag.tsv:14:", "a tab"]),
        ("case-labels", "case.csv", csv_text(GOOD + [("great", "Pos"), ("greater", "pos")]), {},
         ["case.csv:2:", "'pos' and 'Pos'", "written two ways", "classes found"]),
        ("numeric-spelling", "num.csv", csv_text([(f"s{i}", "1" if i % 3 else "0") for i in range(9)] + [("s9", "1.0")]),
         {}, ["num.csv:3:", "'1' and '1.0'", "written two ways"]),
        ("40-numeric-classes", "many.csv", _many_numbers(), {},
         ["many.csv", "40 distinct numeric labels", "--kind regression", "'0.0', '0.1'"]),
        ("id-column-as-label", "ids.csv", csv_text([(f"text {i}", f"id{i}") for i in range(30)]), {},
         ["ids.csv", "30 distinct labels in 30 rows", "--label-column"]),
        ("nfc-nfd-labels", "cafe.csv", csv_text(GOOD + [("x", "caf\u00e9"), ("y", "cafe\u0301")]), {},
         ["cafe.csv", "written two ways"]),
    ]


def _json_cases() -> list:
    """JSON Lines values."""
    return [
        ("json-true-and-True", "bool.jsonl", jsonl_text(_good_objects(4) + [{"text": "a", "label": True},
                                                                          {"text": "b", "label": "True"}]), {},
         ["bool.jsonl:5:", "'true' and 'True'"]),
        ("test-file-case", "train.csv", csv_text(GOOD), {"test": "test-case.csv"},
         ["train.csv:2:", "'pos' and 'Pos'", "test-case.csv:2"]),
        ("json-object-label", "obj.jsonl", jsonl_text(_good_objects() + [{"text": "a", "label": {"x": 1}}]), {},
         ["obj.jsonl:11:", "'label' is a JSON object"]),
        ("json-list-text", "list.jsonl", jsonl_text(_good_objects() + [{"text": ["a", "b"], "label": "pos"}]), {},
         ["list.jsonl:11:", "'text' is a JSON list"]),
        ("json-duplicate-key", "dupkey.jsonl", jsonl_text(_good_objects() + ['{"text": "a", "label": "pos", "label": "neg"}']),
         {}, ["dupkey.jsonl:11:", "'label' appears twice"]),
        ("json-nested-duplicate-key", "dupkey2.jsonl",
         jsonl_text(_good_objects() + ['{"text": "a", "label": "pos", "meta": {"k": 1, "k": 2}}']), {},
         ["dupkey2.jsonl:11:", "'k' appears twice"]),
        ("json-nan-regression", "nan.jsonl", jsonl_text(['{"text": "a", "label": 1.5}', '{"text": "b", "label": NaN}']),
         {"kind": "regression"}, ["nan.jsonl:2:", "NaN is not a JSON value"]),
        ("json-true-as-regression", "boolreg.jsonl", jsonl_text([{"text": "a", "label": 1.5}, {"text": "b", "label": True}]
                                                                 + [{"text": f"c{i}", "label": i} for i in range(9)]),
         {"kind": "regression"},
         ["boolreg.jsonl", "'true'", "data row 2, line 2", "not a number"]),
        ("json-huge-int", "bigint.jsonl", jsonl_text(['{"text": "a", "label": 1}', '{"text": "b", "label": ' + "9" * 5000 + "}"]
                                                      + [f'{{"text": "c{i}", "label": {i}}}' for i in range(9)]),
         {"kind": "regression"}, ["bigint.jsonl", "'99999999", "...' (data row 2, line 2)", "beyond float32"]),
        ("json-surrogate", "sur.jsonl", jsonl_text(_good_objects() + ['{"text": "bad \\ud800 escape", "label": "pos"}']), {},
         ["sur.jsonl:11:", "unpaired surrogate"]),
        ("json-label-missing", "miss.jsonl", jsonl_text(_good_objects(4) + [{"text": "no label here"}]), {},
         ["miss.jsonl:5:", "data row 5 has an empty 'label'"]),
        ("json-label-null", "null.jsonl", jsonl_text(_good_objects(2) + [{"text": "a", "label": None}]), {},
         ["null.jsonl:3:", "empty 'label'"]),
        ("json-array-line", "arr.jsonl", jsonl_text(_good_objects(2) + [["a", "pos"]]), {},
         ["arr.jsonl:3:", "a JSON list, not an object"]),
        ("json-deep-nesting", "deep.jsonl", jsonl_text(_good_objects(2) + ["[" * 100_000 + "]" * 100_000]), {},
         ["deep.jsonl:3:", "not JSON"]),
    ]


def _file_cases() -> list:
    """Whole files: empty, encodings, quoting, headers, a folder."""
    return [
        ("empty-file", "empty.csv", "", {}, ["empty.csv", "the file is empty"]),
        ("bom-only", "bom.csv", b"\xef\xbb\xbf", {}, ["bom.csv", "the file is empty"]),
        ("blank-lines-only", "blank.jsonl", "\n\n  \n", {}, ["blank.jsonl", "the file is empty"]),
        ("header-only", "head.csv", "text,label\r\n", {}, ["head.csv", "no data rows", "header is all there is"]),
        ("nul-bytes", "nul.csv", csv_text(GOOD[:3] + [("bad\x00text", "pos")] + GOOD[3:]), {}, ["nul.csv:5:", "NUL byte"]),
        ("utf16", "u16.csv", csv_text(GOOD).encode("utf-16"), {}, ["u16.csv", "UTF-16", "save it as UTF-8"]),
        ("latin1", "latin.csv", csv_text(GOOD[:2] + [("caf\u00e9", "pos")] + GOOD[2:]).encode("latin-1"), {},
         ["latin.csv:4:", "not UTF-8", "byte 0xe9"]),
        ("quote-then-text", "quote.csv", csv_text(GOOD[:2] + [('"abc"def', "pos")] + GOOD[2:]), {},
         ["quote.csv:4:", "after its closing quote"]),
        ("unclosed-quote", "open.csv", csv_text(GOOD) + '"never closed,pos\n', {}, ["open.csv:14:", "never closed"]),
        ("whitespace-text", "ws.csv", csv_text(GOOD[:2] + [("   ", "pos")] + GOOD[2:]), {},
         ["ws.csv:4:", "data row 3 has an empty 'text'"]),
        ("whitespace-label", "wsl.tsv", "text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in GOOD) + "x\t \n", {},
         ["wsl.tsv:14:", "data row 13 has an empty 'label'"]),
        ("same-text-and-label-column", "same.csv", csv_text(GOOD), {"text_column": "label"},
         ["same.csv", "both 'label'"]),
        ("tsv-saved-as-csv", "tabs.csv", "text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in GOOD), {},
         ["tabs.csv", "no column 'text'", "holding tabs"]),
        ("padded-header", "pad.csv", csv_text(GOOD, header="text, label"), {},
         ["pad.csv", "no column 'label'", "' label'"]),
        ("regression-beyond-float32", "big.csv", csv_text([("a", "1.5"), ("b", "1e39"), ("c", "2")]), {"kind": "regression"},
         ["big.csv", "'1e39'", "data row 2, line 3", "beyond float32"]),
        ("a-folder", "folder.csv", None, {}, ["folder.csv", "a folder"]),
    ]


BAD = _cases()
EXTRA = {"test-case.csv": csv_text([("great", "Pos")])}  # the second file of a case (its kwargs name it)

# files that formerly failed and must now load: (id, name, content, kwargs, check on the task)
LONG = "word " * 56_000  # 280 KB: past csv's 128 KiB default field limit
GOOD_CASES = [
    ("280KB-text", "long.csv", csv_text([(LONG, "pos"), ("short", "neg")] * 3), {}),
    ("bom-crlf", "bomcrlf.csv", ("\ufefftext,label\r\n" + "".join(f"{t},{lab}\r\n" for t, lab in GOOD)), {}),
    ("quoted-newlines", "nl.csv", 'text,label\n' + "".join(f'"{t}\nsecond line, with comma",{lab}\n' for t, lab in GOOD), {}),
    ("pandas-index-column", "pd.csv", ",text,label\n" + "".join(f"{i},{t},{lab}\n" for i, (t, lab) in enumerate(GOOD)), {}),
    ("json-number-spelling", "spell.jsonl", jsonl_text(['{"text": "a", "label": 1e-7}', '{"text": "b", "label": 2.50}',
                                                      '{"text": "c", "label": 3}']),
     {"kind": "regression", "fractions": (1.0, 0.0, 0.0)}),
    ("upper-case-suffix", "UPPER.CSV", csv_text(GOOD), {}),
]
