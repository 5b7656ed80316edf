import json

from selfguide.journal import Journal


def test_records_survive_reload_and_run_skips_done_work(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    calls = []
    assert j.run("a", lambda: calls.append(1) or [1, 2]) == [1, 2]
    again = Journal(tmp_path / "j.jsonl")
    assert again.run("a", lambda: calls.append(1) or [9]) == [1, 2]
    assert calls == [1] and (tmp_path / "j.jsonl").read_text().count("\n") == 1


def test_torn_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "j.jsonl"
    Journal(path).record("a", 1)
    with path.open("a") as f:
        f.write('{"key": "b", "val')  # what a kill mid-write leaves
    j = Journal(path)
    j.record("c", 3)
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]
    reloaded = Journal(path)
    assert reloaded.run("c", lambda: 0) == 3
    assert reloaded.run("b", lambda: 2) == 2  # the torn unit is done again


def test_values_with_unicode_line_separators_reload(tmp_path):
    """Web text holds U+2028 and U+0085, which ensure_ascii=False writes raw and str.splitlines splits at."""
    text = "first\u2028second\u0085third\u2029fourth"
    Journal(tmp_path / "j.jsonl").record("a", [text])
    assert Journal(tmp_path / "j.jsonl").run("a", lambda: None) == [text]
