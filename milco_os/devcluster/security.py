"""TLS and basic auth for a secure local OpenSearch (``milco-os cluster up --secure``).

The security plugin is published to Maven Central as
``org.opensearch.plugin:opensearch-security`` and must match the server
version exactly; 2.11.1 is the newest version for which both the plugin and
the ``integ-test-zip`` server are published there, so secure clusters run it.

Certificates (a private CA and one node certificate valid for 127.0.0.1 and
localhost) are made with the ``openssl`` command. The ``admin`` password is
random, stored in a file readable only by the user who started the cluster,
and hashed with the plugin's own bcrypt tool, which reads it from the
environment so it never appears on a command line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from milco_os.devcluster.errors import ClusterError

SECURE_VERSION = "2.11.1"
ADMIN_USER = "admin"
NODE_DN = "CN=node,OU=milco-os,O=milco-os"


class SecuritySetupError(ClusterError):
    """The secure profile could not be prepared."""


def install_security_plugin(home: Path, plugin_zip: Path, java_home: Path) -> None:
    """Install the security plugin into the OpenSearch folder ``home`` (offline)."""
    result = subprocess.run(
        [str(home / "bin" / "opensearch-plugin"), "install", "--batch", f"file://{plugin_zip}"],
        env={**os.environ, "OPENSEARCH_JAVA_HOME": str(java_home)},
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SecuritySetupError(f"installing the security plugin failed:\n{result.stderr}")


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise SecuritySetupError("the secure profile needs the `openssl` command")
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SecuritySetupError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_certificates(folder: Path) -> Path:
    """A CA (``ca.pem``) and a node certificate (``node.pem``, PKCS#8 ``node-key.pem``)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-keyout", "ca-key.pem", "-out", "ca.pem",
             "-subj", "/O=milco-os/CN=milco-os local test CA", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node-key.rsa.pem",
             "-out", "node.csr", "-subj", "/O=milco-os/OU=milco-os/CN=node", cwd=folder)
    (folder / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-days", "30", "-out", "node.pem", "-extfile", "san.ext",
             cwd=folder)
    _openssl("pkcs8", "-topk8", "-nocrypt", "-in", "node-key.rsa.pem", "-out", "node-key.pem",
             cwd=folder)
    for leftover in ("ca-key.pem", "node-key.rsa.pem", "node.csr", "san.ext", "ca.srl"):
        (folder / leftover).unlink(missing_ok=True)  # the CA key is never needed again
    return folder / "ca.pem"


def new_password(path: Path) -> str:
    """A random admin password, written to ``path`` with mode 0600."""
    password = secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password)
    return password


def bcrypt_hash(home: Path, java_home: Path, password: str) -> str:
    """The plugin's bcrypt hash of ``password`` (passed through the environment)."""
    tool = home / "plugins" / "opensearch-security" / "tools" / "hash.sh"
    tool.chmod(0o755)
    result = subprocess.run(
        ["bash", str(tool), "-env", "MILCO_OS_HASH_INPUT"],
        env={**os.environ, "OPENSEARCH_JAVA_HOME": str(java_home),
             "MILCO_OS_HASH_INPUT": password},
        capture_output=True, text=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("$2")]
    if result.returncode != 0 or not lines:
        raise SecuritySetupError(f"hashing the admin password failed: {result.stderr.strip()}")
    return lines[-1].strip()


def configure_node(config: Path, certs: Path, password_hash: str) -> None:
    """Copy the certificates into a node's config folder and write its single user."""
    target = config / "certs"
    target.mkdir(exist_ok=True)
    for name in ("ca.pem", "node.pem", "node-key.pem"):
        shutil.copy(certs / name, target / name)
    (config / "opensearch-security" / "internal_users.yml").write_text(
        '_meta: {type: "internalusers", config_version: 2}\n'
        f'{ADMIN_USER}:\n  hash: "{password_hash}"\n  reserved: true\n'
        '  backend_roles: ["admin"]\n  description: "milco-os local admin"\n'
    )


def node_settings() -> dict[str, object]:
    """The ``opensearch.yml`` security settings of every node (paths are config-relative)."""
    settings: dict[str, object] = {}
    for layer in ("transport", "http"):
        prefix = f"plugins.security.ssl.{layer}"
        settings[f"{prefix}.pemcert_filepath"] = "certs/node.pem"
        settings[f"{prefix}.pemkey_filepath"] = "certs/node-key.pem"
        settings[f"{prefix}.pemtrustedcas_filepath"] = "certs/ca.pem"
    settings.update({
        "plugins.security.ssl.http.enabled": True,
        "plugins.security.ssl.transport.enforce_hostname_verification": False,
        "plugins.security.allow_default_init_securityindex": True,
        "plugins.security.nodes_dn": [NODE_DN],
        "plugins.security.audit.type": "noop",
        "plugins.security.restapi.roles_enabled": ["all_access"],
    })
    return settings
