"""atoll disk on the real default image (the session's composed commit)."""

from __future__ import annotations

from pathlib import Path

from atoll.disk import build_disk, esp_files, plan_disk, read_default_entry
from atoll.disk.layout import MIB
from atoll.progress import PlainReporter
from tests.conftest import ComposedImage


def test_default_image_disk_boots_atolls_static_init(
    default_image: ComposedImage, tmp_path: Path
) -> None:
    image = tmp_path / "default.img"
    plan = plan_disk(default_image.repo, default_image.ref, image, size=2048 * MIB)
    assert plan.kernel_arguments[-3:] == (
        f"root=PARTUUID={plan.layout.root.uuid}",
        "rootfstype=ext4",
        "rootwait",
    )
    result = build_disk(plan, PlainReporter())
    direct = read_default_entry(image)
    assert direct.kernel[0x202:0x206] == b"HdrS"  # a bzImage, not a placeholder
    options = direct.options.split()
    init = next(o for o in options if o.startswith("init="))
    assert init.endswith("/usr/lib/ostree/ostree-prepare-root")
    assert direct.entry.title.startswith(f"atoll minimal {default_image.version}")
    assert direct.entry.linux in esp_files(image)
    assert result.root_bytes_used < plan.layout.root.size // 2
