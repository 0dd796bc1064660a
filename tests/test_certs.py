"""deploy/certs.sh: `dev` makes a usable throw-away chain, `build` checks a delivered one."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
import trustme

ROOT = Path(__file__).resolve().parents[1]
CERTS_SH = ROOT / "deploy" / "certs.sh"
CRT, KEY, BUNDLE, CHAIN = (
    "aibots_kz.crt",
    "aibots.kz.key",
    "aibots_kz.ca-bundle",
    "aibots_kz.chain.crt",
)
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def certs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CERTS_SH), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if ": error:" in line]


def assert_one_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `certs.sh dev` run for the module; tests copy it before changing anything."""
    target = tmp_path_factory.mktemp("certs") / "dev"
    result = certs("dev", target)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


@pytest.fixture
def dev_copy(dev_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "certs"
    shutil.copytree(dev_dir, copy)
    (copy / CHAIN).unlink()
    return copy


def write_delivery(directory: Path, leaf: trustme.LeafCert, root: trustme.CA) -> Path:
    """Lay out a trustme certificate the way the CA delivers aibots.kz's three files."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf_pem, *intermediates = (blob.bytes() for blob in leaf.cert_chain_pems)
    (directory / CRT).write_bytes(leaf_pem)
    (directory / BUNDLE).write_bytes(b"".join(intermediates) or root.cert_pem.bytes())
    (directory / KEY).write_bytes(leaf.private_key_pem.bytes())
    (directory / KEY).chmod(0o600)
    (directory / "ca.crt").write_bytes(root.cert_pem.bytes())
    return directory


def test_dev_makes_the_production_file_names_and_build_accepts_them(dev_dir: Path) -> None:
    for name in (CRT, KEY, BUNDLE, CHAIN, "ca.crt"):
        assert (dev_dir / name).is_file(), name
    assert (dev_dir / KEY).stat().st_mode & 0o777 == 0o600
    assert not list(dev_dir.glob("*ca*.key")), "the throw-away CA keys must not be kept"

    # The chain is the certificate followed by the bundle, nothing else.
    chain = (dev_dir / CHAIN).read_text()
    assert chain.count(PEM_BEGIN) == 2
    assert chain.startswith((dev_dir / CRT).read_text())
    assert chain.rstrip().endswith((dev_dir / BUNDLE).read_text().rstrip())

    # It verifies to the throw-away root, for the names the tests and a local run use.
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", dev_dir / "ca.crt", "-untrusted", dev_dir / BUNDLE,
         dev_dir / CRT],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    for name in ("aibots.kz", "localhost"):
        check = subprocess.run(
            ["openssl", "x509", "-in", dev_dir / CRT, "-noout", "-checkhost", name],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "does match" in check.stdout
    check = subprocess.run(
        ["openssl", "x509", "-in", dev_dir / CRT, "-noout", "-checkip", "127.0.0.1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "does match" in check.stdout

    # build again on the dev directory: success, the private-root warning and nothing else.
    result = certs("build", dev_dir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "private root" in warnings[0], result.stderr
    assert not error_lines(result)


def test_a_key_of_another_certificate_is_refused(dev_copy: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert certs("dev", other).returncode == 0
    shutil.copy(other / KEY, dev_copy / KEY)
    result = certs("build", dev_copy)
    assert_one_error(result, "does not match")
    assert not (dev_copy / CHAIN).exists(), "no chain may be written for a bad pair"


def test_a_certificate_not_covering_aibots_kz_is_a_warning(tmp_path: Path) -> None:
    root = trustme.CA()
    leaf = root.create_child_ca().issue_cert("example.org", key_type=trustme.KeyType.RSA)
    directory = write_delivery(tmp_path / "certs", leaf, root)
    result = certs("build", directory)
    assert result.returncode == 0, result.stderr
    assert "does not cover aibots.kz" in result.stderr
    assert (directory / CHAIN).read_text().count(PEM_BEGIN) == 2

    # The same delivery for the right name has no such warning.
    right = write_delivery(tmp_path / "right", root.issue_cert("aibots.kz"), root)
    result = certs("build", right)
    assert result.returncode == 0, result.stderr
    assert "does not cover" not in result.stderr


def test_expiry_within_30_days_is_a_warning_and_expired_is_an_error(tmp_path: Path) -> None:
    root = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    soon = root.issue_cert("aibots.kz", not_after=now + datetime.timedelta(days=10))
    result = certs("build", write_delivery(tmp_path / "soon", soon, root))
    assert result.returncode == 0, result.stderr
    assert "expires within 30 days" in result.stderr

    later = root.issue_cert("aibots.kz", not_after=now + datetime.timedelta(days=60))
    result = certs("build", write_delivery(tmp_path / "later", later, root))
    assert result.returncode == 0, result.stderr
    assert "expires within" not in result.stderr

    expired = root.issue_cert(
        "aibots.kz",
        not_before=now - datetime.timedelta(days=60),
        not_after=now - datetime.timedelta(days=1),
    )
    assert_one_error(certs("build", write_delivery(tmp_path / "expired", expired, root)), "expired")


def test_a_bundle_of_another_ca_does_not_verify(dev_copy: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert certs("dev", other).returncode == 0
    shutil.copy(other / BUNDLE, dev_copy / BUNDLE)
    assert_one_error(certs("build", dev_copy), "chain does not verify")


def test_a_bundle_in_the_wrong_order_is_a_warning(tmp_path: Path) -> None:
    root = trustme.CA()
    middle = root.create_child_ca()
    leaf = middle.create_child_ca().issue_cert("aibots.kz")
    directory = write_delivery(tmp_path / "certs", leaf, root)
    pems = [blob.bytes() for blob in leaf.cert_chain_pems]
    assert len(pems) == 3
    (directory / BUNDLE).write_bytes(pems[2] + pems[1])  # top intermediate first: wrong
    result = certs("build", directory)
    assert result.returncode == 0, result.stderr
    assert "not followed by its issuer" in result.stderr

    (directory / BUNDLE).write_bytes(pems[1] + pems[2])
    result = certs("build", directory)
    assert result.returncode == 0, result.stderr
    assert "not followed by its issuer" not in result.stderr


def test_a_bundle_without_final_newline_still_makes_a_valid_chain(dev_copy: Path) -> None:
    (dev_copy / CRT).write_text((dev_copy / CRT).read_text().rstrip("\n"))
    result = certs("build", dev_copy)
    assert result.returncode == 0, result.stderr
    chain = (dev_copy / CHAIN).read_text()
    assert "----------" not in chain, "two PEM markers glued on one line"
    assert chain.count(PEM_BEGIN) == 2


def test_missing_files_encrypted_keys_and_bad_usage_fail_clearly(
    dev_copy: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error(certs("build", empty), CRT, "missing")
    assert_one_error(certs("build", tmp_path / "nowhere"), "not a directory")

    encrypted = subprocess.run(
        ["openssl", "pkey", "-in", dev_copy / KEY, "-aes256", "-passout", "pass:secret"],
        capture_output=True, check=True,
    )  # fmt: skip
    (dev_copy / KEY).write_bytes(encrypted.stdout)
    assert_one_error(certs("build", dev_copy), "encrypted")

    assert certs("frobnicate").returncode == 2


def test_a_loose_key_mode_is_a_warning(dev_copy: Path) -> None:
    (dev_copy / KEY).chmod(0o644)
    result = certs("build", dev_copy)
    assert result.returncode == 0, result.stderr
    assert "mode 644" in result.stderr
