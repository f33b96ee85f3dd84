"""Manifest loading: every problem named by file, key and value, before any side effect."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from atoll.errors import EXIT_BAD_INPUT, InputError, ManifestError
from atoll.manifest import PinnedRelease, check_packages, load_manifest, manifest_digest
from atoll.manifest.index import PackageIndex
from atoll.manifest.model import InitStrategy
from atoll.manifest.schema import TOOLBOX_PACKAGES

BASE = """
[image]
name = "base"
version = "1.0"

[packages]
include = ["systemd", "udev"]
exclude = ["openssh-server"]

[units]
mask = ["systemd-firstboot.service"]

[sysctl]
"net.ipv4.ip_forward" = 1
"""


HEAD = '[image]\nname = "x"\nversion = "1"\n'


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifest(path)
    assert exc.value.exit_code == EXIT_BAD_INPUT
    return exc.value.problems


def test_valid_manifest_builds_the_model(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, "base.toml", BASE))
    assert m.ref == "atoll/x86_64/base"
    assert m.packages.include == ("systemd", "udev")
    assert m.sysctl == (("net.ipv4.ip_forward", "1"),)
    assert m.init.strategy is InitStrategy.PREPARE_ROOT
    assert m.distribution.suite == "trixie"
    assert m.sources == (tmp_path / "base.toml",)


def test_extends_merges_lists_and_overrides_scalars(tmp_path: Path) -> None:
    write(tmp_path, "base.toml", BASE)
    child = write(
        tmp_path,
        "site.toml",
        """
        extends = "base.toml"
        [image]
        name = "site"
        [packages]
        include = ["chrony", "openssh-server"]
        exclude = ["udev"]
        """,
    )
    m = load_manifest(child)
    assert m.image.name == "site"
    assert m.image.version == "1.0"  # inherited
    # The child's include takes a package out of the parent's exclude, and vice versa.
    assert m.packages.include == ("systemd", "chrony", "openssh-server")
    assert m.packages.exclude == ("udev",)
    assert m.units.mask == ("systemd-firstboot.service",)
    assert m.sources == (child, tmp_path / "base.toml")


def test_extends_child_file_entry_replaces_parent_entry(tmp_path: Path) -> None:
    write(
        tmp_path,
        "base.toml",
        BASE + '\n[[files]]\npath = "/etc/motd"\ncontent = "parent"\n',
    )
    child = write(
        tmp_path,
        "site.toml",
        'extends = "base.toml"\n[[files]]\npath = "/etc/motd"\ncontent = "child"\nmode = "0600"\n',
    )
    m = load_manifest(child)
    assert len(m.files) == 1
    assert m.files[0].content == "child"
    assert m.files[0].mode == 0o600
    assert m.files[0].path == PurePosixPath("/etc/motd")


def test_paths_resolve_against_the_file_that_wrote_them(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "motd").write_text("hello\n")
    write(
        tmp_path / "base",
        "base.toml",
        BASE + '\n[[files]]\npath = "/etc/motd"\nsource = "motd"\n',
    )
    child = write(tmp_path, "site.toml", 'extends = "base/base.toml"\n')
    m = load_manifest(child)
    assert m.files[0].source == tmp_path / "base" / "motd"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEAD + "[pakages]\n",
            "unknown key 'pakages' (did you mean 'packages'?)",
        ),
        (
            HEAD + "[packages]\ninclde = []\n",
            "[packages]: unknown key 'inclde' (did you mean 'include'?)",
        ),
        (
            HEAD + '[packages]\ninclude = "systemd"\n',
            "[packages].include: expected a list of strings, got string 'systemd'",
        ),
        (
            HEAD + '[containers]\nruntime = "yes"\n',
            "[containers].runtime: expected true or false, got string 'yes'",
        ),
        (
            HEAD + '[init]\nstrategy = "initramf"\n',
            "[init].strategy: 'initramf' is not one of 'atoll-prepare-root', 'initramfs' "
            "(did you mean 'initramfs'?)",
        ),
        ('[image]\nname = "X y"\nversion = "1"\n', "[image].name: 'X y' must be lowercase letters"),
        ('[image]\nversion = "1"\n', "[image].name: required key is missing"),
        (
            HEAD + '[packages]\ninclude = ["a1", "b1"]\nexclude = ["b1"]\n',
            "[packages].include: 'b1' is also in [packages].exclude",
        ),
        (
            HEAD + '[units]\nenable = ["a.service"]\nmask = ["a.service"]\n',
            "[units].enable: 'a.service' is also in [units].mask",
        ),
        (
            HEAD + '[units]\nenable = ["nounit"]\n',
            "'nounit' is not a systemd unit name",
        ),
        (
            HEAD + '[[files]]\npath = "/etc/x"\nsource = "missing.txt"\n',
            "[[files]][0].source: file 'missing.txt' not found",
        ),
        (
            HEAD + '[[files]]\npath = "/etc/x"\n',
            "give exactly one of 'source' or 'content'",
        ),
        (
            HEAD + '[[files]]\npath = "/var/lib/x"\ncontent = ""\n',
            "/var is not part of the image",
        ),
        (
            HEAD + '[[files]]\npath = "/etc/x"\ncontent = ""\nmode = "rwx"\n',
            "[[files]][0].mode: expected a file mode",
        ),
        (
            HEAD + '[[files]]\npath = "/etc/x"\ncontnt = ""\n',
            "unknown key 'contnt' (did you mean 'content'?)",
        ),
        (
            HEAD + '[sysctl]\n"net ipv4" = 1\n',
            "'net ipv4' is not a sysctl key",
        ),
        (
            HEAD + '[kernel]\narguments = ["a b"]\n',
            "must be one argument without spaces",
        ),
        (
            HEAD + '[[users]]\nname = "svc"\nuid = 0\n',
            "uid 0 is outside 100..59999",
        ),
        (
            HEAD + '[packages]\ninclude = ["initramfs-tools"]\n',
            "conflicts with [init].strategy",
        ),
        (
            HEAD + '[[containers.preload]]\narchive = "m.toml"\nreference = "busybox"\n',
            "'busybox' is not a full image reference",
        ),
        ("[image\n", "invalid TOML"),
        ('extends = "nope.toml"\n', "extends: "),
    ],
)
def test_bad_manifest_names_file_key_and_value(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "m.toml", text)
    problems = problems_of(path)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(("m.toml", str(path))) or "m.toml" in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.toml",
        HEAD + '[pakages]\n[units]\nenable = "x"\n[strip]\ndocs = 1\n',
    )
    assert len(problems_of(path)) == 3


def test_extends_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    problems = problems_of(tmp_path / "a.toml")
    assert any("cycle" in p for p in problems)


def test_error_in_parent_names_the_parent_file(tmp_path: Path) -> None:
    write(tmp_path, "base.toml", BASE + "\n[kernel]\nmodules = []\n")
    child = write(tmp_path, "site.toml", 'extends = "base.toml"\n')
    problems = problems_of(child)
    assert problems == [
        f"{os.path.relpath(tmp_path / 'base.toml')}: "
        "[kernel]: unknown key 'modules' (did you mean 'modules_keep'?)"
    ]


INDEX = PackageIndex(
    fingerprint="f",
    versions={
        "systemd": "252",
        "udev": "252",
        "nginx": "1.22",
        "openssh-server": "9.2",
        "linux-image-cloud-amd64": "6.1",
        "initramfs-tools": "0.142",
        **dict.fromkeys(TOOLBOX_PACKAGES, "1"),
    },
    provides={"linux-initramfs-tool": ("initramfs-tools",), "httpd": ("nginx",)},
)


def test_an_unknown_toolbox_package_is_named_unless_a_site_archive_replaces_it(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "m.toml", BASE + '\n[agent]\ntoolbox_packages = ["tcpdumpp"]\n')
    with pytest.raises(ManifestError) as exc:
        check_packages(load_manifest(path), INDEX)
    assert exc.value.problems == [
        f"{os.path.relpath(path)}: [agent].toolbox_packages: "
        "unknown package 'tcpdumpp' (did you mean 'tcpdump'?)"
    ]
    no_shell = BASE + '\n[agent]\ntoolbox = ""\ntoolbox_packages = ["tcpdumpp"]\n'
    check_packages(load_manifest(write(tmp_path, "n.toml", no_shell)), INDEX)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('toolbox = "toolbox"', "[agent] toolbox: 'toolbox' is not a full image reference"),
        ('toolbox = "-h/x:1"', "is not a full image reference"),  # read by ctr as a flag
        ('toolbox = "localhost/tb:1"\n[containers]\nruntime = false', "runtime is false"),
        (
            'toolbox = "localhost/tb:1"\n[[containers.preload]]\narchive = "tb.tar"\n'
            'reference = "localhost/tb:1"',
            "is also a [[containers.preload]] reference",
        ),
        ('toolbox_archive = "absent.tar"', "[agent].toolbox_archive: file 'absent.tar' not found"),
    ],
)
def test_a_toolbox_the_node_could_not_run_is_refused(
    tmp_path: Path, body: str, message: str
) -> None:
    (tmp_path / "tb.tar").write_bytes(b"")
    problems = problems_of(write(tmp_path, "m.toml", BASE + "\n[agent]\n" + body + "\n"))
    assert any(message in p for p in problems), problems


def test_unknown_package_suggests_near_miss(tmp_path: Path) -> None:
    path = write(tmp_path, "m.toml", BASE.replace('"udev"', '"nginxx"'))
    m = load_manifest(path)
    with pytest.raises(ManifestError) as exc:
        check_packages(m, INDEX)
    assert exc.value.problems == [
        f"{os.path.relpath(m.path)}: [packages].include: "
        "unknown package 'nginxx' (did you mean 'nginx'?)"
    ]


def test_a_package_of_the_other_suite_is_named_as_such(tmp_path: Path) -> None:
    bookworm = PackageIndex(fingerprint="b", versions={"libssl3": "3.0"}, provides={})
    path = write(tmp_path, "m.toml", BASE.replace('"udev"', '"libssl3"'))
    m = load_manifest(path)
    with pytest.raises(ManifestError) as exc:
        check_packages(m, INDEX, elsewhere=("bookworm", bookworm))
    assert exc.value.problems == [
        f"{os.path.relpath(m.path)}: [packages].include: "
        "unknown package 'libssl3': it is in bookworm, not in trixie"
    ]


def test_virtual_package_asks_for_a_provider(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, "m.toml", BASE.replace('"udev"', '"httpd"')))
    with pytest.raises(ManifestError) as exc:
        check_packages(m, INDEX)
    assert "'httpd' is a virtual package provided by nginx" in exc.value.problems[0]


def test_known_packages_pass(tmp_path: Path) -> None:
    check_packages(load_manifest(write(tmp_path, "m.toml", BASE)), INDEX)


def test_digest_follows_content_not_location(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "motd").write_text("hi\n")
        write(d, "m.toml", BASE + '\n[[files]]\npath = "/etc/motd"\nsource = "motd"\n')
    da = manifest_digest(load_manifest(a / "m.toml"))
    assert da == manifest_digest(load_manifest(b / "m.toml"))
    (b / "motd").write_text("changed\n")
    assert da != manifest_digest(load_manifest(b / "m.toml"))


def _pin(version: str = "v1.35.4") -> PinnedRelease:
    return PinnedRelease(version, "kubernetes/go.mod")


def test_the_pinned_kubernetes_release_is_accepted_and_read_only_when_named(
    tmp_path: Path,
) -> None:
    reads: list[str] = []

    def pin() -> PinnedRelease:
        reads.append("read")
        return _pin()

    plain = load_manifest(write(tmp_path, "p.toml", BASE), kubernetes_pin=pin)
    assert not plain.kubernetes.enabled
    assert reads == []
    node = write(tmp_path, "k.toml", BASE + '\n[kubernetes]\nversion = "v1.35.4"\n')
    manifest = load_manifest(node, kubernetes_pin=pin)
    assert manifest.kubernetes.enabled
    assert manifest.kubernetes.version == "v1.35.4"
    assert reads == ["read"]


def _kubernetes_problems(path: Path, pin: Callable[[], PinnedRelease]) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifest(path, kubernetes_pin=pin)
    assert exc.value.exit_code == EXIT_BAD_INPUT
    return exc.value.problems


def _unreadable_pin() -> PinnedRelease:
    raise InputError("kubernetes/go.mod: cannot read the Kubernetes build wrapper: gone")


@pytest.mark.parametrize(
    ("body", "pin", "expected"),
    [
        (
            '[kubernetes]\nversion = "v1.34.2"\n',
            _pin,
            "[kubernetes].version: 'v1.34.2' is not the release atoll builds: "
            "kubernetes/go.mod pins v1.35.4",
        ),
        (
            '[kubernetes]\nversion = "1.35.4"\n',
            _pin,
            "[kubernetes].version: '1.35.4' is not a release (vMAJOR.MINOR.PATCH)",
        ),
        (
            '[kubernetes]\nversion = "v1.35.4\\n"\n',
            _pin,
            "[kubernetes].version: control character",
        ),
        ("[kubernetes]\n", _pin, "[kubernetes].version: required key is missing"),
        ("[kubernetes]\nversion = 135\n", _pin, "[kubernetes].version: expected a string"),
        ('[kubernetes]\nversoin = "v1.35.4"\n', _pin, "(did you mean 'version'?)"),
        (
            '[kubernetes]\nversion = "v1.35.4"\n[containers]\nruntime = false\n'
            '[agent]\ntoolbox = ""\n',
            _pin,
            "[kubernetes]: the kubelet runs pods in containerd, but [containers] runtime is false",
        ),
        (
            '[kubernetes]\nversion = "v1.35.4"\n',
            _unreadable_pin,
            "[kubernetes].version: cannot tell which release atoll builds: kubernetes/go.mod: "
            "cannot read",
        ),
    ],
)
def test_a_kubernetes_release_atoll_cannot_build_is_refused_naming_the_file(
    tmp_path: Path, body: str, pin: Callable[[], PinnedRelease], expected: str
) -> None:
    path = write(tmp_path, "m.toml", BASE + "\n" + body)
    problems = _kubernetes_problems(path, pin)
    assert len(problems) == 1, problems
    assert problems[0].startswith(os.path.relpath(path) + ": "), problems
    assert expected in problems[0], problems


def test_a_kubernetes_problem_names_the_file_that_wrote_it(tmp_path: Path) -> None:
    write(tmp_path, "base.toml", BASE + '\n[kubernetes]\nversion = "v1.34.0"\n')
    child = write(tmp_path, "node.toml", 'extends = "base.toml"\n')
    (problem,) = _kubernetes_problems(child, _pin)
    assert problem.startswith(os.path.relpath(tmp_path / "base.toml") + ": [kubernetes].version")
    fixed = write(
        tmp_path, "fixed.toml", 'extends = "base.toml"\n[kubernetes]\nversion = "v1.35.4"\n'
    )
    assert load_manifest(fixed, kubernetes_pin=_pin).kubernetes.version == "v1.35.4"


def test_the_kubernetes_release_is_part_of_the_digest(tmp_path: Path) -> None:
    plain = load_manifest(write(tmp_path, "p.toml", BASE))
    node = load_manifest(write(tmp_path, "k.toml", BASE + '[kubernetes]\nversion = "v1.35.4"\n'))
    assert manifest_digest(plain) != manifest_digest(node)
