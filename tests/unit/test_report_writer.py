"""The report after a kill -9: a torn last line stays apart from the resumed run's lines."""
import json

from keymigration.migrate.report import ReportWriter


def test_a_torn_last_line_is_ended_before_the_next_run_appends(tmp_path):
    path = tmp_path / "report.jsonl"
    path.write_text('{"key": "a", "outcome": "migrated"}\n{"key": "kill/obj-')  # killed mid-line
    writer = ReportWriter.open(str(path))
    writer.summary({"migrated": 1})
    writer.close()
    lines = path.read_text().splitlines()
    assert lines[1] == '{"key": "kill/obj-'
    assert json.loads(lines[2]) == {"summary": {"migrated": 1}}


def test_a_whole_or_empty_report_gets_no_blank_line(tmp_path):
    for content in ("", '{"key": "a"}\n'):
        path = tmp_path / "report.jsonl"
        path.write_text(content)
        writer = ReportWriter.open(str(path))
        writer.summary({})
        writer.close()
        assert path.read_text() == content + '{"summary": {}}\n'
