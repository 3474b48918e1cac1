"""One class per search server the local cluster can run, so they fit side by side.

Each knows which versions it supports, which JDK they need, how to assemble the
server from what is published on Maven Central, and the settings its nodes
take. :func:`distribution` picks the class from a name and a version:

>>> distribution("opensearch", None).version
'2.19.6'
>>> type(distribution("opensearch", "3.3.2")).__name__, distribution("elasticsearch", None).label
('OpenSearch3', 'Elasticsearch 9.2.4')
"""

from __future__ import annotations

import re
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from milco_os.devcluster import security
from milco_os.devcluster.artifacts import (
    cache_home,
    download,
    finish_install,
    maven_url,
    run_root,
    unpack,
)
from milco_os.devcluster.errors import ClusterOptionError
from milco_os.devcluster.java import find_java

DISTRIBUTIONS = ("opensearch", "elasticsearch")


def parse_version(version: str) -> tuple[int, int, int]:
    """``"3.3.2"`` -> ``(3, 3, 2)``; anything else is a :class:`ClusterOptionError`."""
    if not re.fullmatch(r"\d+\.\d+\.\d+", version or ""):
        raise ClusterOptionError(f"--version {version!r}: expected MAJOR.MINOR.PATCH, "
                                 "e.g. 2.19.6")
    major, minor, patch = (int(x) for x in version.split("."))
    return major, minor, patch


class Distribution(ABC):
    """A server version that a local cluster runs."""

    name: ClassVar[str]  # "opensearch" | "elasticsearch"
    title: ClassVar[str]  # for messages
    default_version: ClassVar[str]
    conf_env: ClassVar[str]  # the variable naming the node's config folder
    java_env: ClassVar[str]  # the variable naming the JDK
    launcher: ClassVar[str]  # bin/<launcher>
    config_name: ClassVar[str]  # <config_name>.yml
    manager_setting: ClassVar[str]  # initial cluster-manager (master) nodes

    def __init__(self, version: str | None = None) -> None:
        self.version = version or self.default_version
        self.check_version(parse_version(self.version))

    @property
    def label(self) -> str:
        return f"{self.title} {self.version}"

    @abstractmethod
    def check_version(self, version: tuple[int, int, int]) -> None:
        """Raise :class:`ClusterOptionError` when this class cannot run ``version``."""

    @abstractmethod
    def java_range(self) -> tuple[int, int | None]:
        """The JDK major versions the server runs on (inclusive; None: no upper bound)."""

    @abstractmethod
    def install(self, secure: bool = False) -> Path:
        """Download (once) and assemble the server; return its home folder."""

    def java_home(self) -> Path:
        low, high = self.java_range()
        return find_java(low, high, what=self.label)

    def home(self, secure: bool = False) -> Path:
        return run_root() / "dist" / (f"{self.name}-{self.version}" + ("-secure" if secure else ""))

    def node_settings(self, single: bool) -> dict[str, Any]:
        """Settings every node of this distribution gets beyond ports, paths and discovery."""
        return {}

    def check_secure(self, secure: bool) -> None:
        """Refuse ``secure`` unless this is the version the security plugin is published for."""
        if secure and (self.name, self.version) != ("opensearch", security.SECURE_VERSION):
            raise ClusterOptionError(
                f"--secure runs OpenSearch {security.SECURE_VERSION} (the newest version whose "
                f"security plugin is on Maven Central); {self.label} has no secure profile")


class _OpenSearch(Distribution):
    title = "OpenSearch"
    name = "opensearch"
    conf_env = "OPENSEARCH_PATH_CONF"
    java_env = "OPENSEARCH_JAVA_HOME"
    launcher = "opensearch"
    config_name = "opensearch"
    manager_setting = "cluster.initial_cluster_manager_nodes"
    # Modules published as plain jars: (artifact, module, plugin class, description).
    MODULES = (
        ("mapper-extras-client", "mapper-extras", "org.opensearch.index.mapper.MapperExtrasPlugin",
         "Adds advanced field mappers (rank_feature, rank_features, ...)"),
        ("analysis-common", "analysis-common",
         "org.opensearch.analysis.common.CommonAnalysisPlugin",
         "Adds the built-in language analyzers"),
    )

    def install(self, secure: bool = False) -> Path:
        """The ``integ-test-zip`` server plus ``mapper-extras`` (``rank_features``) and
        ``analysis-common`` (language analyzers), each a published jar given the
        ``plugin-descriptor.properties`` it has in the full distribution."""
        self.check_secure(secure)
        home = self.home(secure)
        if (home / ".complete").exists():
            return home
        downloads = cache_home() / "downloads"
        zip_path = download(maven_url("org.opensearch.distribution.integ-test-zip", "opensearch",
                                      self.version, "zip"),
                            downloads / f"opensearch-{self.version}.zip")
        staging = home.with_name(home.name + ".staging")
        root = unpack(zip_path, staging)
        for artifact, module_name, classname, description in self.MODULES:
            jar = download(maven_url("org.opensearch.plugin", artifact, self.version, "jar"),
                           downloads / f"{artifact}-{self.version}.jar")
            module = root / "modules" / module_name
            module.mkdir(parents=True, exist_ok=True)
            shutil.copy(jar, module / jar.name)
            (module / "plugin-descriptor.properties").write_text(
                f"description={description}\nversion={self.version}\nname={module_name}\n"
                f"classname={classname}\njava.version=11\nopensearch.version={self.version}\n")
        if secure:
            plugin = download(maven_url("org.opensearch.plugin", "opensearch-security",
                                        f"{self.version}.0", "zip"),
                              downloads / f"opensearch-security-{self.version}.0.zip")
            security.install_security_plugin(root, plugin, self.java_home())
        return finish_install(staging, root, home)


class OpenSearch2(_OpenSearch):
    """OpenSearch 2.x (JDK 11-23: it still runs under the Java security manager)."""

    default_version = "2.19.6"

    def check_version(self, version: tuple[int, int, int]) -> None:
        if version[0] != 2 or version < (2, 11, 0):
            raise ClusterOptionError(f"OpenSearch {self.version} is not supported: use 2.11.0 "
                                     "or newer 2.x, or 3.3.0 or newer 3.x")

    def java_range(self) -> tuple[int, int | None]:
        return 11, 23


class OpenSearch3(_OpenSearch):
    """OpenSearch 3.x from 3.3.0, the first 3.x whose ``integ-test-zip`` is on Maven Central."""

    default_version = "3.3.2"
    # 3.0 renamed the module plugin classes.
    MODULES = tuple((artifact, module, classname.replace("Plugin", "ModulePlugin"), description)
                    for artifact, module, classname, description in _OpenSearch.MODULES)

    def check_version(self, version: tuple[int, int, int]) -> None:
        if version[0] != 3 or version < (3, 3, 0):
            raise ClusterOptionError(f"OpenSearch {self.version} is not supported: 3.x starts "
                                     "at 3.3.0 here (the first on Maven Central)")

    def java_range(self) -> tuple[int, int | None]:
        return 21, None


class Elasticsearch(Distribution):
    """Elasticsearch 8.11-8.19 (JDK 17-23) and 9.0-9.2 (JDK 21+), from the ``integ-test-zip``
    (server core, security off; no ``analysis-common``, no ML plugin)."""

    title = "Elasticsearch"
    name = "elasticsearch"
    default_version = "9.2.4"
    conf_env = "ES_PATH_CONF"
    java_env = "ES_JAVA_HOME"
    launcher = "elasticsearch"
    config_name = "elasticsearch"
    manager_setting = "cluster.initial_master_nodes"
    # Elastic publishes no checksums beside these zips: the digests of the tested versions
    # are pinned, and other versions are refused rather than run unverified.
    SHA256 = {
        "8.11.3": "e721c6a12a5165c3731a08efd0f6d09ef63a1344aeefe0d9bd7523b5a9b723ab",
        "8.19.21": "215d5f3dbf0609a149f6218a9e47b6ae2df34ebbff3c5754e35f15a5e5393c8a",
        "9.0.8": "8ce7a118094825810fcfd17aecd51a1abebee4b600005b5d06ea46bb7d869993",
        "9.1.0": "be5c5440bb6344cee4070f8f77a6c3cd72363db494944047cdd93748c4e19111",
        "9.2.4": "af7b81fe31627c7523b2546351cd4e47310faa6a72c8db8dc8f7a191e871cfaf",
    }

    def check_version(self, version: tuple[int, int, int]) -> None:
        if self.version not in self.SHA256:
            raise ClusterOptionError(
                f"Elasticsearch {self.version} is not supported by the local cluster: use one "
                f"of {', '.join(self.SHA256)} (Maven Central publishes no checksum to verify "
                "others)")

    def java_range(self) -> tuple[int, int | None]:
        # 8.x needs the Java security manager, which JDK 24 removed.
        return (21, None) if self.version.startswith("9.") else (17, 23)

    def install(self, secure: bool = False) -> Path:
        self.check_secure(secure)
        home = self.home()
        if (home / ".complete").exists():
            return home
        zip_path = download(
            maven_url("org.elasticsearch.distribution.integ-test-zip", "elasticsearch",
                      self.version, "zip"),
            cache_home() / "downloads" / f"elasticsearch-{self.version}.zip",
            sha256=self.SHA256[self.version])
        staging = home.with_name(home.name + ".staging")
        return finish_install(staging, unpack(zip_path, staging), home)

    def node_settings(self, single: bool) -> dict[str, Any]:
        return {"xpack.security.enabled": False}


def distribution(name: str, version: str | None) -> Distribution:
    """The class that runs ``name`` at ``version`` (None: its default version)."""
    if name == "elasticsearch":
        return Elasticsearch(version)
    if name != "opensearch":
        raise ClusterOptionError(f"--distribution {name!r}: expected one of {DISTRIBUTIONS}")
    if version and version.startswith("3."):
        return OpenSearch3(version)
    return OpenSearch2(version)
