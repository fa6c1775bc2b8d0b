"""The reader matrix (formats/readers.py): which known S3EC reader reads a migrated object with
only the target key, per mode and wrap, and the warnings the CLI prints from it (#13 item 9)."""
from pathlib import Path

import pytest

from keymigration.formats import READERS, Mode, WrapAlgorithm, reader_warnings

DOCS = Path(__file__).resolve().parents[2] / "docs"
NET = ".NET Amazon.Extensions.S3.Encryption V2/V4"


def by_name(name):
    return next(r for r in READERS if r.name == name)


def test_the_table_says_what_the_interop_tests_and_the_sources_show():
    assert by_name("Ruby aws-sdk-s3 Encryption/EncryptionV2").explicit_suffix and by_name("Go v1 s3crypto").explicit_suffix
    assert not by_name("Python S3EC v4").explicit_suffix  # "metadata always wins" (tests/interop/README.md)
    net = by_name(NET)
    assert not net.kms_from_file and not net.kms_context_cbc and not net.explicit_suffix
    assert {r.name for r in READERS if r.tested} == {"Ruby aws-sdk-s3 Encryption/EncryptionV2", "Go v1 s3crypto", "Python S3EC v4"}


def test_a_cut_over_leaves_dotnet_unable_to_read():
    warnings = reader_warnings(Mode.CUTOVER, WrapAlgorithm.KMS_CONTEXT)
    assert len(warnings) == 1 and warnings[0].startswith(NET) and "object metadata only" in warnings[0]
    assert reader_warnings("cutover", "kms") == warnings


@pytest.mark.parametrize("suffix", [".instruction", ".rewrapped"])
def test_instruction_file_mode_leaves_metadata_first_readers_on_the_old_key(suffix):
    warnings = reader_warnings(Mode.INSTRUCTION_FILE, WrapAlgorithm.KMS_CONTEXT, suffix)
    named = {w.split(" keeps ")[0].split(" cannot ")[0] for w in warnings}
    assert named == {"Python S3EC v4", "Java S3EC v3/v4", "Go S3EC v3/v4", NET}
    assert all("old key" in w for w in warnings if not w.startswith(NET))


def test_docs_list_every_reader_the_code_knows():
    formats = (DOCS / "formats.md").read_text()
    for reader in READERS:
        assert reader.name in formats, reader.name
