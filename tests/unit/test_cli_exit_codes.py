"""The CLI's exit codes: deliberate outcomes have codes no crash produces; a crash is retryable."""
import pytest

from keymigration import cli
from keymigration.migrate import EXIT_CONFIG, EXIT_RETRY


class Sink:
    def __init__(self):
        self.failures = []

    def failed(self, message, code):
        self.failures.append((message, code))


@pytest.fixture
def termination_log(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv("KEYMIGRATION_TERMINATION_LOG", str(path))
    return path


def test_a_usage_error_is_a_configuration_error(capsys):
    assert cli.main(["run", "--no-such-flag"]) == EXIT_CONFIG
    assert "usage: keymigration" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:  # --help still exits 0 through argparse
        cli.build_parser().parse_args(["--help"])
    assert done.value.code == 0


def test_an_unexpected_exception_is_retryable_and_says_why(monkeypatch, termination_log):
    sink = Sink()

    def boom(settings, **channel):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "Migration", boom)
    monkeypatch.setattr(cli, "_progress_channel", lambda settings: {"store": sink, "extra_progress": sink})
    code = cli.main(["run", "--bucket", "b", "--kms-key-id", "alias/k", "--progress", "none"])
    assert code == EXIT_RETRY != 1  # a traceback's own exit code would fail the Job at once
    assert termination_log.read_text() == "unexpected RuntimeError: a bug"
    assert sink.failures == [("unexpected RuntimeError: a bug", EXIT_RETRY)]
