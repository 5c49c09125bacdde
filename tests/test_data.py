import json

import pytest

from conftest import write_tsv
from unbackdoor.config import DataConfig
from unbackdoor.data import load_data, read_labeled_file, stratified_sample
from unbackdoor.errors import DataError


def test_named_datasets_counts_labels_and_targets(shared_root):
    sst2 = load_data(DataConfig(dataset="sst2"))
    assert (len(sst2.train), len(sst2.test), len(sst2.dev)) == (6920, 1821, 872)
    assert sst2.label_names == ["negative", "positive"] and sst2.target == 1
    assert sum(r["label"] for r in sst2.train) == 3610
    hsol = load_data(DataConfig(dataset="hsol"))
    assert hsol.label_names[hsol.target] == "non-hate" and len(hsol.train) == 5823
    ag = load_data(DataConfig(dataset="agnews"))
    assert ag.label_names[ag.target] == "World" and (len(ag.train), len(ag.test)) == (8000, 1000)
    assert all(sum(r["label"] == c for r in ag.test) == 250 for c in range(4))


def test_agnews_seeded_sampling_is_balanced_and_reproducible(shared_root):
    a = load_data(DataConfig(dataset="agnews", agnews_split="seeded"), seed=1)
    b = load_data(DataConfig(dataset="agnews", agnews_split="seeded"), seed=1)
    c = load_data(DataConfig(dataset="agnews", agnews_split="seeded"), seed=2)
    assert [sum(r["label"] == k for r in a.train) for k in range(4)] == [2000] * 4
    assert [sum(r["label"] == k for r in a.test) for k in range(4)] == [250] * 4
    assert a.train == b.train and a.train != c.train


def test_target_by_name_and_bad_target(shared_root):
    assert load_data(DataConfig(dataset="sst2", target="negative")).target == 0
    with pytest.raises(DataError, match=r"target class 'neutral' is not in the dataset's classes"):
        load_data(DataConfig(dataset="sst2", target="neutral"))
    with pytest.raises(DataError, match="not in the dataset's classes"):
        load_data(DataConfig(dataset="agnews", target=7))


def test_user_files_tsv_csv_jsonl(tmp_path):
    rows = [("good film", "pos"), ("bad film", "neg"), ("fine", "pos")]
    tsv = write_tsv(tmp_path / "d.tsv", rows)
    (tmp_path / "d.csv").write_text('sentence,y\n"good, film",pos\nbad film,neg\n', encoding="utf-8")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"t": t, "l": y}) for t, y in rows), encoding="utf-8")
    r1, names = read_labeled_file(tsv)
    assert names == ["neg", "pos"] and [r["label"] for r in r1] == [1, 0, 1]
    r2, _ = read_labeled_file(tmp_path / "d.csv", "sentence", "y", ["neg", "pos"])
    assert r2[0] == {"text": "good, film", "label": 1}
    r3, _ = read_labeled_file(tmp_path / "d.jsonl", "t", "l", ["neg", "pos"])
    assert [r["label"] for r in r3] == [1, 0, 1]


@pytest.mark.parametrize("content,pattern", [
    (None, r"missing\.tsv: file not found"),
    ("", r"file is empty"),
    ("text,label\na,0\n", r"missing column\(s\) \['text', 'label'\].*wrong delimiter"),
    ("sentence\tlabel\na\t0\n", r"missing column\(s\) \['text'\]; found columns \['sentence', 'label'\]"),
    ("text\tlabel\ngood\t0\nbad\t7\n", r"line 3: label '7' is not in the label set \['neg', 'pos'\]"),
    ("text\tlabel\ngood\t0\n \t1\n", r"line 3: empty text in column 'text'"),
    ("text\ttext\tlabel\na\tb\t0\n", r"header repeats column\(s\) \['text'\]"),
    ("text\tlabel\ngood\t0\nbad\n", r"line 3: expected 2 fields"),
])
def test_bad_user_files(tmp_path, content, pattern):
    path = tmp_path / ("missing.tsv" if content is None else "bad.tsv")
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        read_labeled_file(path, label_names=["neg", "pos"])


def test_mixed_label_types_and_non_utf8(tmp_path):
    write_tsv(tmp_path / "m.tsv", [("a", "0"), ("b", "pos")])
    with pytest.raises(DataError, match=r"line 3: label 'pos' mixes types"):
        read_labeled_file(tmp_path / "m.tsv")
    (tmp_path / "latin.tsv").write_bytes(b"text\tlabel\ncaf\xe9\t0\n")
    with pytest.raises(DataError, match=r"latin\.tsv: line 2: not valid UTF-8 \(byte 0xe9"):
        read_labeled_file(tmp_path / "latin.tsv")


def test_unknown_dataset_name():
    with pytest.raises(DataError, match=r"unknown dataset 'imdb': expected one of \['agnews', 'hsol', 'sst2'\]"):
        load_data(DataConfig(dataset="imdb"))


def test_stratified_sample_keeps_proportions():
    rows = [{"text": str(i), "label": int(i < 30)} for i in range(100)]
    s = stratified_sample(rows, n=50, seed=0)
    assert len(s) == 50 and sum(r["label"] for r in s) == 15


def test_hf_dataset_offline_error_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"could not load Hugging Face dataset 'glue'.*needs internet access"):
        load_data(DataConfig(dataset="hf:glue"))


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"data: not a file"):
        read_labeled_file(tmp_path / "data")
