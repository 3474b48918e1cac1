"""The two ways a local cluster command fails: the cluster, or the options given."""

from __future__ import annotations

from milco_os.core.errors import InputError, ServiceError


class ClusterError(ServiceError):
    """The local cluster could not be obtained, started, or stopped."""


class ClusterOptionError(InputError):
    """An option the local cluster cannot honour (a bad heap size, a flag the runtime lacks)."""
