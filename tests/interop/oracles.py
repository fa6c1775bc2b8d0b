"""Interoperability oracles: the *real* AWS S3 Encryption Clients, driven from Python tests.

Every oracle talks HTTP to an S3/KMS endpoint (a moto server on 127.0.0.1 in the tests,
see ``tests/support/moto_server.py``); nothing is stubbed. The calls are batch-oriented:
one call starts **one** Ruby or Go process for all items, so a test should collect its
objects and make one call per oracle.

Region is always ``us-east-1`` and the credentials are the fake ``testing`` ones.

Writers
-------
``ruby_put(endpoint, items) -> None``
    Ruby ``aws-sdk-s3`` (Debian ``ruby-aws-sdk-s3`` 1.117.2). Raises :class:`OracleError`
    listing every failed item. Item fields:

    * ``bucket``, ``key`` (str; any UTF-8, e.g. ``"dir/naïve ünï €.txt"``, ``"a+b c%d=e"``)
    * ``body`` (bytes)
    * ``client``: ``"v1"`` = ``Aws::S3::Encryption::Client``,
      ``"v2"`` = ``Aws::S3::EncryptionV2::Client``
    * the master key, exactly one of ``aes_key`` (bytes, 16/24/32),
      ``rsa_private_pem`` (str, PKCS#1 or PKCS#8 PEM; the client encrypts with its public
      half, so a public-key PEM also works for writing), ``kms_key_id`` (str)
    * ``envelope_location``: ``"metadata"`` (default) or ``"instruction_file"``
    * ``instruction_file_suffix`` (optional, default ``".instruction"``; write side)
    * ``matdesc`` (optional dict): AES/RSA materials description; for v2+KMS the
      ``kms_encryption_context``; not allowed for v1+KMS (always ``{"kms_cmk_id": key}``)
    * ``metadata`` (optional dict): extra S3 user metadata

    Resulting formats: v1+AES -> V1 ``x-amz-key`` (AES/ECB wrap), CBC body; v1+RSA -> V1
    ``x-amz-key`` (RSA PKCS#1 v1.5), CBC body; v1+KMS -> ``x-amz-key-v2`` with wrap ``kms``,
    ``AES/CBC/PKCS5Padding``; v2+AES -> ``AES/GCM``; v2+RSA -> ``RSA-OAEP-SHA1``;
    v2+KMS -> ``kms+context``; every v2 body is ``AES/GCM/NoPadding``.

``py_s3ec_put(endpoint, items) -> None``
    Official Python S3EC ``amazon-s3-encryption-client-python`` 4.0.0, in-process (it keeps
    no global state; each call builds fresh boto3 clients). Always writes the envelope to
    object metadata (the library cannot write instruction files). Item fields:
    ``bucket``, ``key``, ``body``, ``kms_key_id``, ``format`` (``"v3"`` default: committing
    suite 115, ``x-amz-c/3/w/t/d/i``; ``"v2"``: ``AES/GCM/NoPadding`` + ``kms+context``,
    written under ``FORBID_ENCRYPT_ALLOW_DECRYPT``), optional ``encryption_context`` (dict,
    ASCII only), optional ``metadata`` (extra user metadata).

``java_v1_put(endpoint, items) -> None``
    The AWS SDK for Java v1 layouts with an RSA key pair, made by the JDK's own JCE (no
    BouncyCastle): ``tests/interop/java/JavaV1Layout.java`` encrypts as Java v1's
    ``AmazonS3EncryptionClient`` does (``"RSA"`` = PKCS#1 v1.5 for the data key) and the object
    is uploaded with boto3 as Java v1 would send it (body and ``x-amz-meta-*``). Item fields:
    ``bucket``, ``key``, ``body``, ``rsa_private_pem`` (its public half is used), ``mode``:
    ``"AE"`` (AuthenticatedEncryption without a provider named BC: ``x-amz-key-v2``, no
    ``x-amz-wrap-alg``, AES/GCM body) or ``"EO"`` (EncryptionOnly: ``x-amz-key``, AES/CBC body).
    Needs ``javac``/``java`` (JDK 11+, Debian ``openjdk-17-jdk-headless``); the class is compiled
    once into :func:`go_cache_dir` ``/java``.

Readers (never raise for one object; return one entry per item, in order)
------------------------------------------------------------------------
Each returns ``list[bytes | str]``: the plaintext ``bytes`` on success, otherwise a ``str``
error message from the client. ``kms_key_id=`` given to the function is the default for
items that do not carry their own ``kms_key_id``.

``ruby_get(endpoint, items, *, kms_key_id=None)``
    ``Aws::S3::EncryptionV2::Client`` with ``security_profile: :v2_and_legacy``,
    ``key_wrap_schema: :kms_context``, ``kms_key_id:`` the (new) KMS key. Item fields:

    * ``bucket``, ``key``
    * ``suffix``: ``None`` (default) = client defaults (object metadata first, then
      ``key + ".instruction"``); a string = ``get_object(envelope_location:
      :instruction_file, instruction_file_suffix: suffix)`` (instruction file first; NB Ruby
      silently falls back to the metadata when that file is missing or not JSON)
    * ``kms_key_id`` (per item), ``any_cmk`` (bool: ``:kms_allow_decrypt_with_any_cmk``),
      ``kms_encryption_context`` (dict)
    * ``client``: ``"v2"`` (default) or ``"v1"`` (``Aws::S3::Encryption::Client``)
    * ``security_profile``: ``"v2_and_legacy"`` (default) or ``"v2"``
    * instead of KMS, a master key to prove AES/RSA writes: ``aes_key`` (bytes) or
      ``rsa_private_pem`` (str); with ``client="v2"`` this uses ``key_wrap_schema``
      ``:aes_gcm`` / ``:rsa_oaep_sha1`` (which also read the V1 legacy wraps under
      ``:v2_and_legacy``)

``go_get(endpoint, items, *, kms_key_id=None)``
    AWS SDK for Go v1 (Debian ``golang-github-aws-aws-sdk-go-dev`` 1.44.133)
    ``s3crypto.NewDecryptionClientV2`` with a ``CryptoRegistry`` holding
    ``RegisterKMSContextWrapWithCMK`` + ``RegisterKMSWrapWithCMK`` (same key),
    ``RegisterAESGCMContentCipher`` and ``RegisterAESCBCContentCipher(cr, AESCBCPadder)``.
    Item fields: ``bucket``, ``key``, ``load_strategy`` (``"default"``: metadata if it has
    ``x-amz-key-v2``, error on V1 ``x-amz-key``, else ``key + ".instruction"``;
    ``"instruction_file"``: ``S3LoadStrategy{InstructionFileSuffix: suffix}``, always the
    file), ``suffix`` (default ``".instruction"``), ``kms_key_id``, ``any_cmk`` (bool: the
    ``...WithAnyCMK`` registrations). The program is built once (GOPATH mode,
    ``GO111MODULE=off``) into :func:`go_cache_dir` and reused while its source is unchanged.

``py_s3ec_get(endpoint, items, *, kms_key_id=None)``
    Python S3EC 4.0.0 with a ``KmsKeyring(kms_key_id, enable_legacy_wrapping_algorithms=
    legacy)``, ``commitment_policy`` (default ``"REQUIRE_ENCRYPT_ALLOW_DECRYPT"``, which reads
    V2 and V3) and ``enable_legacy_unauthenticated_modes=legacy``. Item fields: ``bucket``,
    ``key``, ``suffix`` (``None``: default lookup; else passed as ``InstructionFileSuffix``,
    which the library only uses when the object metadata has no envelope), ``kms_key_id``,
    ``encryption_context`` (dict), ``legacy`` (bool, default True; sets both
    ``legacy_wrapping`` = ``enable_legacy_wrapping_algorithms`` for wrap ``kms`` and
    ``legacy_unauthenticated`` = ``enable_legacy_unauthenticated_modes`` for CBC, which can
    also be given separately), ``commitment_policy`` (a ``CommitmentPolicy`` member name).

Helpers
-------
``ruby_available()``, ``go_available()``, ``java_available()`` -> ``str | None`` (``None`` if usable, else the
reason), ``versions(endpoint=None)`` -> dict of tool/library versions, :class:`OracleError`.

All JSON exchanged with Ruby/Go is UTF-8, bodies travel base64-encoded, and each child
process gets a clean environment (no proxies, no shared AWS config, fake credentials).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Union

HERE = Path(__file__).resolve().parent
RUBY_DIR = HERE / "ruby"
GO_SRC = HERE / "go" / "s3ecoracle" / "main.go"
GO_SDK_GOPATH = "/usr/share/gocode"
REGION = "us-east-1"
DEFAULT_TIMEOUT = 180

Result = Union[bytes, str]

__all__ = [
    "OracleError",
    "Result",
    "go_available",
    "go_build",
    "go_cache_dir",
    "go_get",
    "java_available",
    "java_v1_put",
    "py_s3ec_get",
    "py_s3ec_put",
    "ruby_available",
    "ruby_get",
    "ruby_put",
    "versions",
]


class OracleError(RuntimeError):
    """An oracle process could not run, or a writer failed for at least one item."""


# --------------------------------------------------------------------------- plumbing


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal, hermetic environment for Ruby/Go children."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if extra:
        env.update(extra)
    return env


def _run_json(cmd: list[str], request: dict, *, timeout: float, env: dict[str, str],
              cwd: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="s3ec-oracle-") as tmp:
        req_path = Path(tmp, "request.json")
        resp_path = Path(tmp, "response.json")
        req_path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
        try:
            proc = subprocess.run(
                [*cmd, str(req_path), str(resp_path)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                env=env,
                cwd=str(cwd) if cwd else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise OracleError(f"{cmd[0]} timed out after {timeout}s") from exc
        if proc.returncode != 0 or not resp_path.exists():
            raise OracleError(
                f"{' '.join(cmd)} exited with {proc.returncode}\n"
                f"stdout: {proc.stdout.decode(errors='replace')[-4000:]}\n"
                f"stderr: {proc.stderr.decode(errors='replace')[-4000:]}"
            )
        return json.loads(resp_path.read_text(encoding="utf-8"))


def _decode_results(response: dict, n: int) -> list[Result]:
    results = response.get("results")
    if not isinstance(results, list) or len(results) != n:
        raise OracleError(f"oracle returned {results!r} for {n} items")
    out: list[Result] = []
    for r in results:
        if r.get("ok"):
            out.append(base64.b64decode(r.get("body_b64") or ""))
        else:
            out.append(str(r.get("error") or "unknown error"))
    return out


def _raise_on_failures(kind: str, items: list[dict], response: dict) -> None:
    results = response.get("results") or []
    if len(results) != len(items):
        raise OracleError(f"{kind}: got {len(results)} results for {len(items)} items")
    failures = [
        f"  {it.get('bucket')}/{it.get('key')!r}: {r.get('error')}"
        for it, r in zip(items, results)
        if not r.get("ok")
    ]
    if failures:
        raise OracleError(f"{kind} failed for {len(failures)} item(s):\n" + "\n".join(failures))


def _batched(items: Iterable[dict]) -> list[dict]:
    items = list(items)
    for it in items:
        if not isinstance(it, dict):
            raise TypeError(f"items must be dicts, got {type(it).__name__}")
    return items


# --------------------------------------------------------------------------- Ruby


@functools.lru_cache(maxsize=None)
def ruby_available() -> str | None:
    """``None`` if ``ruby`` can load aws-sdk-s3 and aws-sdk-kms, else the reason."""
    ruby = shutil.which("ruby")
    if not ruby:
        return "ruby not found (apt-get install ruby ruby-aws-sdk-s3 ruby-aws-sdk-kms)"
    proc = subprocess.run(
        [ruby, "-e", "require 'aws-sdk-s3'; require 'aws-sdk-kms'; "
                     "Aws::S3::EncryptionV2::Client; print Aws::S3::GEM_VERSION"],
        capture_output=True, env=_child_env(), timeout=60,
    )
    if proc.returncode != 0:
        return "ruby cannot load aws-sdk-s3/aws-sdk-kms: " + proc.stderr.decode(errors="replace")[-500:]
    return None


def _ruby(script: str, request: dict, timeout: float) -> dict:
    reason = ruby_available()
    if reason:
        raise OracleError(reason)
    return _run_json(
        [shutil.which("ruby") or "ruby", "-W0", str(RUBY_DIR / script)],
        request, timeout=timeout, env=_child_env(), cwd=RUBY_DIR,
    )


def _ruby_key_fields(src: dict, dst: dict) -> None:
    if src.get("aes_key") is not None:
        dst["aes_key_b64"] = _b64(src["aes_key"])
    if src.get("rsa_private_pem") is not None:
        pem = src["rsa_private_pem"]
        dst["rsa_private_pem"] = pem.decode("ascii") if isinstance(pem, bytes) else pem
    if src.get("kms_key_id") is not None:
        dst["kms_key_id"] = src["kms_key_id"]


def ruby_put(endpoint: str, items: Iterable[dict], *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write every item with Ruby's real S3EC (see module docstring); one Ruby process."""
    items = _batched(items)
    if not items:
        return
    wire = []
    for it in items:
        keys = [k for k in ("aes_key", "rsa_private_pem", "kms_key_id") if it.get(k) is not None]
        if len(keys) != 1:
            raise ValueError(f"item {it.get('key')!r} needs exactly one master key, got {keys}")
        w: dict[str, Any] = {
            "bucket": it["bucket"],
            "key": it["key"],
            "body_b64": _b64(it.get("body", b"")),
            "client": it.get("client", "v2"),
            "envelope_location": it.get("envelope_location", "metadata"),
        }
        _ruby_key_fields(it, w)
        for opt in ("instruction_file_suffix", "matdesc", "metadata"):
            if it.get(opt) is not None:
                w[opt] = it[opt]
        wire.append(w)
    response = _ruby("put.rb", {"endpoint": endpoint, "items": wire}, timeout)
    _raise_on_failures("ruby_put", items, response)


def ruby_get(endpoint: str, items: Iterable[dict], *, kms_key_id: str | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> list[Result]:
    """Read every item with Ruby's real S3EC; plaintext bytes or an error string per item."""
    items = _batched(items)
    if not items:
        return []
    wire = []
    for it in items:
        w: dict[str, Any] = {
            "bucket": it["bucket"],
            "key": it["key"],
            "suffix": it.get("suffix"),
            "client": it.get("client", "v2"),
            "security_profile": it.get("security_profile", "v2_and_legacy"),
            "any_cmk": bool(it.get("any_cmk", False)),
        }
        _ruby_key_fields(it, w)
        if not any(k in w for k in ("aes_key_b64", "rsa_private_pem", "kms_key_id")) and kms_key_id:
            w["kms_key_id"] = kms_key_id
        if it.get("kms_encryption_context") is not None:
            w["kms_encryption_context"] = it["kms_encryption_context"]
        wire.append(w)
    response = _ruby("get.rb", {"endpoint": endpoint, "items": wire}, timeout)
    return _decode_results(response, len(items))


# --------------------------------------------------------------------------- Go


def go_cache_dir() -> Path:
    """Where the Go program is built: ``$KEYMIGRATION_INTEROP_CACHE`` or tests/interop/.gobuild."""
    override = os.environ.get("KEYMIGRATION_INTEROP_CACHE")
    return Path(override) if override else HERE / ".gobuild"


@functools.lru_cache(maxsize=None)
def go_available() -> str | None:
    """``None`` if the Go toolchain and the Go v1 SDK (GOPATH layout) are present."""
    if not shutil.which("go"):
        return "go not found (apt-get install golang-go golang-github-aws-aws-sdk-go-dev)"
    s3crypto = Path(GO_SDK_GOPATH, "src/github.com/aws/aws-sdk-go/service/s3/s3crypto")
    if not s3crypto.is_dir():
        return f"{s3crypto} missing (apt-get install golang-github-aws-aws-sdk-go-dev)"
    return None


def _go_env(cache: Path) -> dict[str, str]:
    return _child_env({
        "HOME": str(cache),
        "GOPATH": f"{cache / 'gopath'}:{GO_SDK_GOPATH}",
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOCACHE": str(cache / "gocache"),
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    })


@functools.lru_cache(maxsize=None)
def go_build() -> Path:
    """Build tests/interop/go/s3ecoracle once (content-addressed), return the binary path."""
    reason = go_available()
    if reason:
        raise OracleError(reason)
    source = GO_SRC.read_bytes()
    go_version = subprocess.run(["go", "version"], capture_output=True, check=True).stdout
    sdk_version = Path(GO_SDK_GOPATH, "src/github.com/aws/aws-sdk-go/aws/version.go").read_bytes()
    digest = hashlib.sha256(source + go_version + sdk_version).hexdigest()[:16]
    cache = go_cache_dir()
    binary = cache / "bin" / f"s3ecoracle-{digest}"
    if binary.exists():
        return binary
    pkg_dir = cache / "gopath" / "src" / "s3ecoracle"
    pkg_dir.mkdir(parents=True, exist_ok=True)
    (pkg_dir / "main.go").write_bytes(source)
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = binary.with_name(f"{binary.name}.tmp{os.getpid()}")
    proc = subprocess.run(
        ["go", "build", "-o", str(tmp_out), "s3ecoracle"],
        capture_output=True, env=_go_env(cache), cwd=str(pkg_dir), timeout=600,
    )
    if proc.returncode != 0:
        raise OracleError("go build failed:\n" + proc.stderr.decode(errors="replace")[-4000:])
    os.replace(tmp_out, binary)
    return binary


def go_get(endpoint: str, items: Iterable[dict], *, kms_key_id: str | None = None,
           timeout: float = DEFAULT_TIMEOUT) -> list[Result]:
    """Read every item with the Go v1 SDK s3crypto client; bytes or an error string per item."""
    items = _batched(items)
    if not items:
        return []
    binary = go_build()
    wire = []
    for it in items:
        strategy = it.get("load_strategy", "default")
        if strategy not in ("default", "instruction_file"):
            raise ValueError(f"load_strategy must be 'default' or 'instruction_file', got {strategy!r}")
        wire.append({
            "bucket": it["bucket"],
            "key": it["key"],
            "load_strategy": strategy,
            "suffix": it.get("suffix") or ".instruction",
            "kms_key_id": it.get("kms_key_id") or kms_key_id or "",
            "any_cmk": bool(it.get("any_cmk", False)),
        })
    response = _run_json(
        [str(binary)], {"endpoint": endpoint, "region": REGION, "items": wire},
        timeout=timeout, env=_child_env(),
    )
    return _decode_results(response, len(items))


# --------------------------------------------------------------------------- Java v1 layouts (JCE)

JAVA_SRC = HERE / "java" / "JavaV1Layout.java"


@functools.lru_cache(maxsize=None)
def java_available() -> str | None:
    """``None`` if a JDK (javac and java) is on PATH."""
    if not shutil.which("javac") or not shutil.which("java"):
        return "javac/java not found (apt-get install openjdk-17-jdk-headless)"
    return None


@functools.lru_cache(maxsize=None)
def java_build() -> Path:
    """Compile JavaV1Layout once (content-addressed by source and javac version); its class dir."""
    reason = java_available()
    if reason:
        raise OracleError(reason)
    version = subprocess.run(["javac", "-version"], capture_output=True, check=True)
    digest = hashlib.sha256(JAVA_SRC.read_bytes() + version.stdout + version.stderr).hexdigest()[:16]
    classes = go_cache_dir() / "java" / digest
    if (classes / "JavaV1Layout.class").exists():
        return classes
    tmp = classes.with_name(f"{digest}.tmp{os.getpid()}")
    proc = subprocess.run(["javac", "-d", str(tmp), str(JAVA_SRC)], capture_output=True, env=_child_env(), timeout=300)
    if proc.returncode != 0:
        raise OracleError("javac failed:\n" + proc.stderr.decode(errors="replace")[-4000:])
    os.replace(tmp, classes)
    return classes


def java_v1_put(endpoint: str, items: Iterable[dict], *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write items in Java v1's AE-without-BC or EO layout with an RSA key (see module docstring)."""
    from cryptography.hazmat.primitives import serialization

    items = _batched(items)
    if not items:
        return
    classes = java_build()
    s3, _ = _boto_clients(endpoint)
    by_key: dict[str, list[dict]] = {}
    for it in items:
        if it.get("mode") not in ("AE", "EO"):
            raise ValueError(f"mode must be 'AE' or 'EO', got {it.get('mode')!r}")
        pem = it["rsa_private_pem"]
        by_key.setdefault(pem if isinstance(pem, str) else pem.decode(), []).append(it)
    for pem, group in by_key.items():
        public = serialization.load_pem_private_key(pem.encode(), password=None).public_key()
        with tempfile.TemporaryDirectory(prefix="java-v1-") as tmp:
            der = Path(tmp, "kek.der")
            der.write_bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
            args = []
            for n, it in enumerate(group):
                Path(tmp, str(n)).write_bytes(it.get("body", b""))
                args.append(f"{it['mode']}:{Path(tmp, str(n))}")
            proc = subprocess.run(["java", "-cp", str(classes), "JavaV1Layout", str(der), *args],
                                  capture_output=True, env=_child_env(), timeout=timeout)
            if proc.returncode != 0:
                raise OracleError("JavaV1Layout failed:\n" + proc.stderr.decode(errors="replace")[-4000:])
            lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
            for n, (it, line) in enumerate(zip(group, lines, strict=True)):
                s3.put_object(Bucket=it["bucket"], Key=it["key"], Body=Path(tmp, f"{n}.body").read_bytes(),
                              Metadata=line["metadata"])


# --------------------------------------------------------------------------- Python S3EC v4


def _boto_clients(endpoint: str):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
        region_name=REGION,
    )
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2})
    return (
        session.client("s3", endpoint_url=endpoint, config=config),
        session.client("kms", endpoint_url=endpoint, config=config),
    )


def py_s3ec_put(endpoint: str, items: Iterable[dict]) -> None:
    """Write items with the official Python S3EC v4 (V3 committing by default, or V2)."""
    from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
    from s3_encryption.materials.kms_keyring import KmsKeyring
    from s3_encryption.materials.materials import AlgorithmSuite, CommitmentPolicy

    items = _batched(items)
    failures = []
    clients: dict[tuple[str, str], Any] = {}
    for it in items:
        fmt = it.get("format", "v3")
        try:
            client_key = (it["kms_key_id"], fmt)
            if client_key not in clients:
                s3, kms = _boto_clients(endpoint)
                keyring = KmsKeyring(kms_client=kms, kms_key_id=it["kms_key_id"])
                if fmt == "v3":
                    cfg = S3EncryptionClientConfig(keyring=keyring)
                elif fmt == "v2":
                    cfg = S3EncryptionClientConfig(
                        keyring=keyring,
                        encryption_algorithm=AlgorithmSuite.ALG_AES_256_GCM_IV12_TAG16_NO_KDF,
                        commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT,
                    )
                else:
                    raise ValueError(f"format must be 'v2' or 'v3', got {fmt!r}")
                clients[client_key] = S3EncryptionClient(s3, cfg)
            kwargs: dict[str, Any] = {"Bucket": it["bucket"], "Key": it["key"],
                                      "Body": it.get("body", b"")}
            if it.get("encryption_context") is not None:
                kwargs["EncryptionContext"] = it["encryption_context"]
            if it.get("metadata") is not None:
                kwargs["Metadata"] = it["metadata"]
            clients[client_key].put_object(**kwargs)
        except Exception as exc:  # noqa: BLE001 - collect every failure, raise once
            failures.append(f"  {it.get('bucket')}/{it.get('key')!r}: {type(exc).__name__}: {exc}")
    if failures:
        raise OracleError(f"py_s3ec_put failed for {len(failures)} item(s):\n" + "\n".join(failures))


def py_s3ec_get(endpoint: str, items: Iterable[dict], *, kms_key_id: str | None = None) -> list[Result]:
    """Read items with the official Python S3EC v4; plaintext bytes or an error string per item."""
    from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
    from s3_encryption.materials.kms_keyring import KmsKeyring
    from s3_encryption.materials.materials import CommitmentPolicy

    items = _batched(items)
    results: list[Result] = []
    clients: dict[tuple, Any] = {}
    for it in items:
        try:
            key_id = it.get("kms_key_id") or kms_key_id
            if not key_id:
                raise ValueError("item needs kms_key_id")
            legacy = bool(it.get("legacy", True))
            legacy_wrapping = bool(it.get("legacy_wrapping", legacy))
            legacy_unauthenticated = bool(it.get("legacy_unauthenticated", legacy))
            policy = CommitmentPolicy[it.get("commitment_policy", "REQUIRE_ENCRYPT_ALLOW_DECRYPT")]
            client_key = (key_id, legacy_wrapping, legacy_unauthenticated, policy)
            if client_key not in clients:
                s3, kms = _boto_clients(endpoint)
                keyring = KmsKeyring(kms_client=kms, kms_key_id=key_id,
                                     enable_legacy_wrapping_algorithms=legacy_wrapping)
                cfg = S3EncryptionClientConfig(
                    keyring=keyring,
                    commitment_policy=policy,
                    enable_legacy_unauthenticated_modes=legacy_unauthenticated,
                )
                clients[client_key] = S3EncryptionClient(s3, cfg)
            kwargs: dict[str, Any] = {"Bucket": it["bucket"], "Key": it["key"]}
            if it.get("suffix") is not None:
                kwargs["InstructionFileSuffix"] = it["suffix"]
            if it.get("encryption_context") is not None:
                kwargs["EncryptionContext"] = it["encryption_context"]
            response = clients[client_key].get_object(**kwargs)
            results.append(response["Body"].read())
        except Exception as exc:  # noqa: BLE001 - per-item result, never raise
            results.append(f"{type(exc).__name__}: {exc}")
    return results


# --------------------------------------------------------------------------- versions


def versions() -> dict[str, Any]:
    """Versions of every oracle component that is installed (for reports and README)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {}
    for dist in ("amazon-s3-encryption-client-python", "boto3", "botocore", "moto", "cryptography"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    if ruby_available() is None:
        proc = subprocess.run(
            ["ruby", "-e", "require 'aws-sdk-s3'; require 'aws-sdk-kms'; require 'json'; "
                           "print JSON.generate('ruby' => RUBY_VERSION, "
                           "'openssl' => OpenSSL::OPENSSL_LIBRARY_VERSION, "
                           "'aws-sdk-core' => Aws::CORE_GEM_VERSION, "
                           "'aws-sdk-s3' => Aws::S3::GEM_VERSION, 'aws-sdk-kms' => Aws::KMS::GEM_VERSION)"],
            capture_output=True, env=_child_env(), timeout=60,
        )
        out["ruby"] = json.loads(proc.stdout) if proc.returncode == 0 else None
    if go_available() is None:
        go_version = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
        sdk = Path(GO_SDK_GOPATH, "src/github.com/aws/aws-sdk-go/aws/version.go").read_text()
        sdk_version = next((line.split('"')[1] for line in sdk.splitlines()
                            if line.strip().startswith("const SDKVersion")), None)
        out["go"] = {"go": go_version, "aws-sdk-go": sdk_version}
    return out
