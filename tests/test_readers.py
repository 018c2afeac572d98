"""multitask_data: the one reader of train.py and predict.py (every format, line numbers, bad lines and files), the
training loader's checks, the mixing of sources, and that both tools word a bad line's problem alike."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import TASKS, write_jsonl

import predict
from multitask_data import TRAINING_FORMATS, DataError, file_format, iter_rows, load_split

UNCLOSED = "unterminated quoted field (a '\"' opened on this line is never closed)"


def rows_of(data, fmt, **options):
    """Every (number, row, error) that iter_rows yields for `data` (bytes) read as a stream named `in`."""
    return list(iter_rows(io.BytesIO(data), fmt, "in", **options))


# ----- iter_rows ----------------------------------------------------------------------------------------------------


def test_txt_every_line_is_a_text():
    data = "\ufeffgood\r\n\nbad food".encode() + b"\ncaf\xe9\nlast\n"
    assert rows_of(data, "txt") == [
        (1, {"text": "good"}, None),  # the BOM and the end of line are not part of the text
        (2, {"text": ""}, None),
        (3, {"text": "bad food"}, None),
        (4, None, "not valid UTF-8 (invalid continuation byte at byte 3)"),
        (5, {"text": "last"}, None),  # an undecodable line loses nothing after it
    ]
    assert rows_of(b"hello\n", "txt", text_field="body") == [(1, {"body": "hello"}, None)]


def test_jsonl_rows_and_bad_lines():
    data = b'{"text": "a", "id": 1}\n   \n["a"]\n{"text": "b"\n\xff\n{"text": "c"}'
    assert rows_of(data, "jsonl") == [
        (1, {"text": "a", "id": 1}, None),  # the blank line 2 is skipped, and counted
        (3, None, "expected a JSON object, got list"),
        (4, None, "malformed JSON (Expecting ',' delimiter, column 13)"),  # the column is on the line, not after it
        (5, None, "not valid UTF-8 (invalid start byte at byte 0)"),
        (6, {"text": "c"}, None),
    ]


def test_csv_records_are_numbered_by_their_first_line():
    data = b'id,text\n1,"two\nlines"\n\n2,too,many\n3\n4,"caf\n\xe9\nend"\n5,"a ""quoted"", word"\n'
    assert rows_of(data, "csv") == [
        (2, {"id": "1", "text": "two\nlines"}, None),  # the blank line 4 is skipped
        (5, None, "3 fields, but the header has 2"),
        (6, None, "1 fields, but the header has 2"),
        (
            8,
            None,
            "not valid UTF-8 (invalid continuation byte at byte 0)",
        ),  # the line of a multi-line record that has it
        (10, {"id": "5", "text": 'a "quoted", word'}, None),
    ]
    assert rows_of(b"text\tid\ncomma, kept\t1\n", "tsv") == [(2, {"text": "comma, kept", "id": "1"}, None)]
    assert rows_of(b"", "csv") == []


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b'text,id\ngood,1\n"never closed,2\nbad food,3\n', 3),
        (b'text,id\ngood,1\n"never closed,2', 3),  # no end of line at the end of the file
        (b'text,id\ngood,1\n"two\nlines","never\nclosed\n', 4),  # the quote opens on the record's 2nd line
        (b'id,text\n1,"\n', 2),  # the quote is the last character of its line
    ],
)
def test_an_unterminated_quote_is_reported_where_it_opens(data, line):
    rows = rows_of(data, "csv")
    assert rows[-1] == (line, None, UNCLOSED)
    assert all(error is None for _, _, error in rows[:-1])


def test_an_unterminated_quote_in_a_large_file_is_suspected():
    data = b'text,id\n"never closed,1\n' + b"a line of text,2\n" * 10_000
    number, row, error = rows_of(data, "csv")[0]
    assert (number, row) == (2, None)
    assert error.startswith(
        "unreadable CSV (field larger than field limit (131072)) in a record from this line to line "
    )
    assert error.endswith("; is a '\"' never closed?")


def test_skip():
    # txt and JSONL lines up to `skip` are not even decoded: the bad bytes of line 1 go unseen
    assert rows_of(b"\xff\nb\nc\n", "txt", skip=2) == [(3, {"text": "c"}, None)]
    assert rows_of(b'\xff\n{"text": "b"}\n', "jsonl", skip=1) == [(2, {"text": "b"}, None)]
    # CSV is parsed from the start (a record may span lines), but nothing numbered up to `skip` is yielded
    assert rows_of(b'text\n"a\nb"\nc\n', "csv", skip=2) == [(4, {"text": "c"}, None)]
    assert rows_of(b'text\n"a\nb"\nc\n', "csv", skip=1) == rows_of(b'text\n"a\nb"\nc\n', "csv")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"text;id\ngood;1\n",
            "in:1: header 'text;id' is one column; the file seems to use another delimiter than ','",
        ),
        (b"id,body\n1,good\n", "in:1: no 'text' column in the header ['id', 'body']"),
        (b"\xfftext,id\n", "in:1: not valid UTF-8 (invalid start byte at byte 0)"),
        (b'"text,id\ngood,1\n', f"in:1: {UNCLOSED}"),
    ],
)
def test_a_csv_header_that_cannot_be_read_fails_the_file(data, message):
    with pytest.raises(DataError) as info:
        rows_of(data, "csv")
    assert str(info.value).startswith(message)


def test_files_and_parquet(tmp_path):
    (tmp_path / "in.txt").write_bytes(b"a\nb\n")
    assert list(iter_rows(tmp_path / "in.txt", "txt", "in.txt")) == [(1, {"text": "a"}, None), (2, {"text": "b"}, None)]
    with pytest.raises(DataError, match=r"^nope.txt: file not found$"):
        list(iter_rows(tmp_path / "nope.txt", "txt", "nope.txt"))
    pq.write_table(pa.table({"text": ["a", "b", "c"], "id": [7, 8, 9]}), tmp_path / "in.parquet")
    assert list(iter_rows(str(tmp_path / "in.parquet"), "parquet", "p", skip=1)) == [
        (2, {"text": "b", "id": 8}, None),
        (3, {"text": "c", "id": 9}, None),
    ]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"^bad.parquet: not a readable Parquet file \("):
        list(iter_rows(tmp_path / "bad.parquet", "parquet", "bad.parquet"))


def test_file_format():
    assert file_format("a/B.TSV", TRAINING_FORMATS) == "tsv"
    assert file_format("a.json", TRAINING_FORMATS) == "jsonl"
    with pytest.raises(DataError) as info:
        file_format("a.txt", TRAINING_FORMATS, hint=" or --format")
    assert str(info.value) == (
        "a.txt: unknown file type '.txt'; expected one of ['.csv', '.json', '.jsonl', '.parquet', '.tsv'] or --format"
    )


# ----- training data ------------------------------------------------------------------------------------------------


def test_mixed_single_task_files(tmp_path):
    topic = write_jsonl(tmp_path / "t.jsonl", [{"text": "bank shares", "label": "Finance/Tech"}])
    sentiment = write_jsonl(tmp_path / "s.jsonl", [{"text": "awful film", "label": "Negative"}])
    both = write_jsonl(
        tmp_path / "b.jsonl", [{"text": "great game", "topic": "Entertainment/Sports", "sentiment": "Positive"}]
    )
    ds = load_split([f"topic={topic}", f"sentiment={sentiment}", both], TASKS)
    assert ds["text"] == ["bank shares", "awful film", "great game"]
    assert ds["labels_topic"] == [0, -100, 2]
    assert ds["labels_sentiment"] == [-100, 0, 1]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "x", "topic": "Sports", "sentiment": "Positive"}], "bad.jsonl:1: unknown topic label 'Sports'; allowed: ['Finance/Tech'"),
        ([{"txt": "x", "topic": "Finance/Tech"}], "bad.jsonl:1: no 'text' column"),
        ([{"text": "ok", "topic": "Finance/Tech"}, {"text": "  ", "topic": "Finance/Tech"}], "bad.jsonl:2: text is '  '; expected a non-empty string"),
        ([{"text": "x", "topic": "Finance/Tech", "genre": "news"}], "bad.jsonl:1: column(s) ['genre'] are not tasks of the model"),
        ([{"text": "x", "topic": ["Finance/Tech"]}], "bad.jsonl:1: unknown topic label ['Finance/Tech']; allowed: ['Finance/Tech'"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_line_and_value(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_split([path], TASKS)
    assert message in str(info.value)


def test_bad_files(tmp_path):
    malformed = tmp_path / "m.jsonl"
    malformed.write_text('{"text": "a", "topic": "Finance/Tech"}\n{"text": "b", \n')
    with pytest.raises(DataError, match=r"m.jsonl:2: malformed JSON"):
        load_split([str(malformed)], TASKS)
    with pytest.raises(DataError, match=r"nope.jsonl: file not found"):
        load_split([str(tmp_path / "nope.jsonl")], TASKS)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: no examples \(the file is empty\)"):
        load_split([str(tmp_path / "empty.jsonl")], TASKS)
    with pytest.raises(
        DataError, match=r"unknown task 'genre' in TASK=PATH; the model's tasks are \['topic', 'sentiment'\]"
    ):
        load_split([f"genre={malformed}"], TASKS)
    latin1 = tmp_path / "l.jsonl"
    latin1.write_bytes('{"text": "caf\xe9", "topic": "Finance/Tech"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"l.jsonl:1: not valid UTF-8"):
        load_split([str(latin1)], TASKS)
    semicolon = tmp_path / "s.csv"
    semicolon.write_text("text;topic\nhello;Finance/Tech\n")
    with pytest.raises(
        DataError, match=r"s.csv:1: header 'text;topic' is one column; the file seems to use another delimiter"
    ):
        load_split([str(semicolon)], TASKS)
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufefftext,topic\nhello,Finance/Tech\n", encoding="utf-8")
    assert load_split([str(bom)], TASKS)["labels_topic"] == [0]
    (tmp_path / "t.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"t.txt: unknown file type '.txt'; expected one of \['.csv', '.json'"):
        load_split([str(tmp_path / "t.txt")], TASKS)


def test_csv_and_parquet_files(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text(
        'text,topic,sentiment\n"shares rose, again",Finance/Tech,Positive\nawful diet,Health/Lifestyle,\n'
    )
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("text\ttopic\nbad, slow app\tFinance/Tech\n")
    parquet_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["great game"], "label": ["Positive"]}), parquet_path)
    ds = load_split([str(csv_path), str(tsv_path), f"sentiment={parquet_path}"], TASKS)
    assert ds["text"] == ["shares rose, again", "awful diet", "bad, slow app", "great game"]
    assert ds["labels_topic"] == [0, 1, 0, -100]
    assert ds["labels_sentiment"] == [1, -100, -100, 1]
    pq.write_table(pa.table({"text": ["x"], "label": ["Neutral"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 1: unknown sentiment label 'Neutral'"):
        load_split([f"sentiment={tmp_path / 'bad.parquet'}"], TASKS)


def test_a_bad_csv_record_is_named_by_its_first_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,topic\n"two\nlines",Finance/Tech\n"three\nmore\nlines",Politics\n')
    with pytest.raises(DataError) as info:
        load_split([str(path)], TASKS)
    assert str(info.value) == f"{path}:4: unknown topic label 'Politics'; allowed: {TASKS['topic']}"


# ----- one message per bad line, whichever tool reads it ------------------------------------------------------------

GOOD_JSON = b'{"text": "good", "topic": "Finance/Tech"}\n'
SAME_MESSAGE = {
    "bad UTF-8": ("in.jsonl", GOOD_JSON + b'{"text": "caf\xe9"}\n', "2: not valid UTF-8 (invalid continuation byte at byte 13)"),
    "malformed JSON": ("in.jsonl", GOOD_JSON + b'{"text": "bad"\n', "2: malformed JSON (Expecting ',' delimiter, column 15)"),
    "not an object": ("in.jsonl", GOOD_JSON + b'["text", "in a list"]\n', "2: expected a JSON object, got list"),
    "too many fields": ("in.csv", b'text,topic\ngood,Finance/Tech\n"two\nlines",Finance/Tech,extra\n', "3: 3 fields, but the header has 2"),
    "unterminated quote": ("in.csv", b'text,topic\ngood,Finance/Tech\n"never closed,Finance/Tech\nbad food,Health/Lifestyle\n', f"3: {UNCLOSED}"),
    "bad UTF-8 in CSV": ("in.csv", b'text,topic\ngood,Finance/Tech\n"caf\xe9\nmore",Finance/Tech\n', "3: not valid UTF-8 (invalid continuation byte at byte 4)"),
    "no text column": ("in.csv", b"body,topic\ngood,Finance/Tech\n", "1: no 'text' column in the header ['body', 'topic']"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SAME_MESSAGE))
def test_train_and_predict_word_a_bad_line_alike(case, tmp_path, saved_tiny_model, capsys):
    name, content, message = SAME_MESSAGE[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_split([str(path)], TASKS)
    argv = ["--model", str(saved_tiny_model[2]), "--input", str(path), "--output", str(tmp_path / "out.jsonl")]
    assert predict.main([*argv, "--on_error", "fail"]) == 1
    predicted = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(info.value) == f"{path}:{message}"
    assert predicted == f"error: {info.value}"


def test_utf16_and_nul_bytes_are_undecodable_lines():
    # UTF-16 splits into lines that are valid UTF-8 full of NUL characters: each is reported, none is a text
    assert rows_of("good\nbad\n".encode("utf-16"), "txt") == [
        (1, None, "not valid UTF-8 (the file starts with a UTF-16 byte-order mark); save it as UTF-8"),
        (2, None, "a NUL byte at byte 0 (a UTF-16 or binary file?); save it as UTF-8"),
        (3, None, "a NUL byte at byte 0 (a UTF-16 or binary file?); save it as UTF-8"),
    ]
    assert rows_of(b'{"text": "a"}\n{"text": "b\x00"}\n', "jsonl")[1] == (
        2,
        None,
        "a NUL byte at byte 11 (a UTF-16 or binary file?); save it as UTF-8",
    )
