"""The ops shell's toolbox import (``ContainerdRuntime.prepare``) with the real preload script.

A stand-in ``ctr`` (the preload tests', plus ``images list --quiet name==REF``)
keeps containerd's image names in a file; the agent's runtime runs the image's
own ``usr/lib/atoll/preload`` against it. The VM test of the ops shell covers
the real containerd.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atoll.agent.shell import ContainerdRuntime, ShellUnavailable
from atoll.compose.customize import OVERLAY
from tests.integration.test_overlay_preload import FAKE_CTR

REFERENCE = "localhost/atoll/toolbox:1"
LISTING = FAKE_CTR.replace(
    "rm)\n",
    'list)\n    grep -x "${2#name==}" "$store" || true ;;\nrm)\n',
)


def _runtime(tmp_path: Path, *, archive: bool = True) -> tuple[ContainerdRuntime, Path]:
    images = tmp_path / "images"
    images.mkdir()
    if archive:  # the stand-in's "archive": the names ctr gives its images
        (images / "toolbox-0123.oci.tar").write_text(f"{REFERENCE}\n")
    (images / "toolbox.list").write_text(f"toolbox-0123.oci.tar {REFERENCE}\n")
    ctr = tmp_path / "ctr"
    ctr.write_text(LISTING)
    os.chmod(ctr, 0o700)
    store = tmp_path / "store"
    store.write_text("")
    # The agent's commands get a clean environment: the store's path goes in a wrapper.
    runtime = ContainerdRuntime(
        images=images,
        imported=tmp_path / "var/lib/atoll/toolbox.imported",
        preload=str(OVERLAY / "usr/lib/atoll/preload"),
        ctr=str(_wrapper(tmp_path, ctr, store)),
    )
    return runtime, store


def _wrapper(tmp_path: Path, ctr: Path, store: Path) -> Path:
    wrapper = tmp_path / "ctr-wrapper"
    wrapper.write_text(f'#!/bin/sh\nFAKE_CTR_STORE={store} exec {ctr} "$@"\n')
    os.chmod(wrapper, 0o700)
    return wrapper


def test_the_toolbox_is_imported_once_and_again_when_it_went_missing(tmp_path: Path) -> None:
    runtime, store = _runtime(tmp_path)
    runtime.prepare()
    assert store.read_text().split() == [REFERENCE]
    assert runtime.imported.read_text() == (runtime.images / "toolbox.list").read_text()
    # Imported: a second shell does not import again (the stand-in would list it twice
    # if it did not check; make any import fail to prove it is not run).
    (runtime.images / "toolbox-0123.oci.tar").write_text("not-what-was-imported\n")
    runtime.prepare()
    assert store.read_text().split() == [REFERENCE]
    # An operator removed it (ctr images rm): the next shell imports it again.
    (runtime.images / "toolbox-0123.oci.tar").write_text(f"{REFERENCE}\n")
    store.write_text("")
    runtime.prepare()
    assert store.read_text().split() == [REFERENCE]


def test_an_upgrade_that_changed_the_toolbox_imports_the_new_one(tmp_path: Path) -> None:
    runtime, _ = _runtime(tmp_path)
    runtime.prepare()
    (runtime.images / "toolbox-4567.oci.tar").write_text(f"{REFERENCE}\n")
    (runtime.images / "toolbox.list").write_text(f"toolbox-4567.oci.tar {REFERENCE}\n")
    before = runtime.imported.read_text()
    runtime.prepare()
    assert runtime.imported.read_text() != before
    assert "toolbox-4567" in runtime.imported.read_text()


def test_a_toolbox_neither_in_containerd_nor_in_the_image_is_named(tmp_path: Path) -> None:
    runtime, _ = _runtime(tmp_path, archive=False)
    with pytest.raises(ShellUnavailable) as caught:
        runtime.prepare()
    message = str(caught.value)
    assert REFERENCE in message and "toolbox-0123.oci.tar is missing" in message


def test_a_failed_import_is_named_with_ctr_s_words(tmp_path: Path) -> None:
    runtime, _ = _runtime(tmp_path)
    # ctr gives the image another name than the wanted one and cannot tag it
    (runtime.images / "toolbox-0123.oci.tar").write_text("")
    with pytest.raises(ShellUnavailable, match=f"importing the ops toolbox image {REFERENCE}"):
        runtime.prepare()
    assert not runtime.imported.exists()
