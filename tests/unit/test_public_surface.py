"""The package's public surface, pinned (like httpx's tests/test_exported_members.py).

Each package exports exactly what its ``__all__`` says, nothing it merely imported leaks out,
and the surface below is the one users and the CLI rely on: changing it is a deliberate edit of
this file. The CLI imports only from these surfaces (and two modules it loads lazily)."""
from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

import keymigration

SURFACE = {
    "keymigration": [
        "CheckpointError", "ConfigurationError", "ContentError", "CutOverRefused", "EnvelopeError",
        "InvalidKeyMigration", "KeyFileError", "KeyMigrationError", "KmsError", "Mode", "NotReadable",
        "ObjectError", "PreconditionFailed", "S3Error", "SetupError", "Unavailable", "UnwrapError", "VerifyLevel",
        "WrapAlgorithm", "__version__",
    ],
    "keymigration.formats": [
        "BACKUP_SUFFIX", "DEFAULT_INSTRUCTION_SUFFIX", "DEFAULT_SAMPLE_RATE", "READERS", "AesMasterKey", "DataKey", "Envelope", "Location",
        "MasterKey", "MetadataKind", "Mode", "Reader", "RsaMasterKey", "SecretBytes", "Unwrapped", "VerifyLevel",
        "WrapAlgorithm", "check_cbc_tail", "check_commitment", "check_target", "decrypt_stream", "detect",
        "from_instruction_file", "from_metadata", "instruction_body", "load_key_bytes", "load_key_files",
        "reader_warnings", "target_fields", "unwrap_data_key", "verify_body",
    ],
    "keymigration.aws": [
        "AdaptiveTokenBucket", "Bucket", "ClientOptions", "KmsKeys", "MetadataRewriter", "StoredFile",
        "Telemetry", "TokenBucket", "Wrapped", "make_clients", "watch_throttling",
    ],
    "keymigration.migrate": [
        "EXIT_CONFIG", "EXIT_FAILED_OBJECTS", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RETRY",
        "EXIT_TOO_MANY_FAILURES",
        "Checkpoint", "CheckpointStore", "Counters", "DurationEstimate", "FileCheckpointStore", "InventoryError",
        "KeyRange", "KmsBudget", "ListingHint", "MemoryCheckpointStore", "Migration", "ObjectResult",
        "ObjectRewrapper", "Outcome", "PrefixWorker", "ProgressSink", "Prune", "ReportWriter", "RewrapOptions",
        "Rollback", "RollbackOptions", "RunOptions", "Shard", "ShardPlan", "Summary", "WorkerOptions",
        "human_duration", "plan_shards", "verify_process",
    ],
    "keymigration.kube": [
        "InstallConfig", "KeyMigration", "KubernetesProgress", "Plan", "SourceKeyRef", "WorkerAws", "child_name",
        "job_manifest", "progress_manifest", "reconcile",
    ],
    "keymigration.demo": ["MotoServer", "encrypt_object", "put_encrypted", "run_demo"],
    "keymigration.errors": [
        "CheckpointError", "ConfigurationError", "ContentError", "CutOverRefused", "EnvelopeError",
        "InvalidKeyMigration", "KeyFileError", "KeyMigrationError", "KmsError", "NotReadable", "ObjectError",
        "PreconditionFailed", "S3Error", "SetupError", "Unavailable", "UnwrapError",
    ],
}
# Modules the CLI may import directly (both lazily: they pull in kopf, or are the CLI's own).
CLI_DIRECT_MODULES = {"keymigration.kube.operator", "keymigration.logs"}


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_surface_is_pinned(name):
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(SURFACE[name])


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_every_public_member_is_exported(name):
    """Nothing public in the namespace that ``__all__`` leaves out (submodules aside)."""
    module = importlib.import_module(name)
    public = {
        member for member, value in vars(module).items()
        if not member.startswith("_") and not isinstance(value, types.ModuleType) and member != "annotations"
    }
    exported = {m for m in module.__all__ if not m.startswith("_")}
    assert public == exported
    for member in module.__all__:
        assert hasattr(module, member), member


def test_error_tree():
    """One error model: every error has a stable reason and says whether a retry may help."""
    from keymigration import errors

    object_errors = [errors.EnvelopeError, errors.UnwrapError, errors.ContentError, errors.CutOverRefused,
                     errors.NotReadable, errors.KmsError, errors.S3Error, errors.PreconditionFailed]
    setup_errors = [errors.InvalidKeyMigration, errors.KeyFileError, errors.CheckpointError, errors.ConfigurationError]
    assert all(issubclass(e, errors.ObjectError) for e in object_errors)
    assert all(issubclass(e, errors.SetupError) for e in setup_errors)
    assert issubclass(errors.ObjectError, errors.KeyMigrationError) and issubclass(errors.SetupError, errors.KeyMigrationError)
    assert not issubclass(errors.ObjectError, errors.SetupError) and not issubclass(errors.SetupError, errors.ObjectError)
    error = errors.KmsError("kms-ThrottlingException", "KMS Encrypt failed", retryable=True)
    assert (error.reason, error.retryable, str(error)) == ("kms-ThrottlingException", True, "KMS Encrypt failed")
    assert errors.PreconditionFailed("k").retryable and errors.PreconditionFailed("k").reason == "precondition-failed"
    invalid = errors.InvalidKeyMigration(["spec.bucket: bad", "spec.target: missing"])
    assert invalid.problems == ["spec.bucket: bad", "spec.target: missing"] and not invalid.retryable
    for name in errors.__all__:  # the docstring draws the whole tree
        assert name in errors.__doc__, name


def test_cli_imports_only_public_surfaces():
    tree = ast.parse(Path(keymigration.__file__).with_name("cli.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keymigration"):
            if node.module in CLI_DIRECT_MODULES:
                continue
            assert node.module in SURFACE, f"cli.py imports from {node.module}, not a public surface"
            for alias in node.names:
                assert alias.name in SURFACE[node.module], f"cli.py imports {alias.name} from {node.module}"
