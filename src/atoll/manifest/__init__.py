"""The manifest: what an atoll image is made of (TOML in, frozen dataclasses out).

Public surface: :func:`load_manifest`, :func:`check_packages`,
:func:`manifest_digest`, :func:`load_index`, :class:`PinnedRelease` and the model types.
"""

from atoll.manifest.index import PackageIndex, load_index
from atoll.manifest.load import PinnedRelease, check_packages, load_manifest, manifest_digest
from atoll.manifest.model import InitStrategy, Manifest

__all__ = [
    "InitStrategy",
    "Manifest",
    "PackageIndex",
    "PinnedRelease",
    "check_packages",
    "load_index",
    "load_manifest",
    "manifest_digest",
]
