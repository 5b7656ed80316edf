import json

from selfguide.journal import Journal


def test_records_survive_reload_and_run_skips_done_work(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    calls = []
    assert j.run("a", lambda: calls.append(1) or [1, 2]) == [1, 2]
    again = Journal(tmp_path / "j.jsonl")
    assert again.run("a", lambda: calls.append(1) or [9]) == [1, 2]
    assert calls == [1] and len(again) == 1


def test_torn_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "j.jsonl"
    Journal(path).record("a", 1)
    with path.open("a") as f:
        f.write('{"key": "b", "val')  # what a kill mid-write leaves
    j = Journal(path)
    assert "b" not in j
    j.record("c", 3)
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]
    assert Journal(path).get("c") == 3
