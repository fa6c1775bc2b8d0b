"""``keymigration demo`` and what it needs, out of the runtime path: moto stand-ins for S3 and
KMS, and writers of the old S3EC formats (also used by the tests and the benchmark)."""

from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.demo.run import run_demo
from keymigration.demo.standins import MotoServer

__all__ = ["MotoServer", "encrypt_object", "put_encrypted", "run_demo"]
