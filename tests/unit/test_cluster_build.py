"""The Kubernetes build's pure part: the wrapper's pins, the flags, the environment, the key.

The build itself (go, minutes of compiling) is measured by hand: docs/kubernetes.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from atoll.cache import default_cache
from atoll.cli import build_parser
from atoll.cluster import build as kb
from atoll.errors import AtollError, InputError, ToolMissing

ROOT = Path(__file__).resolve().parents[2]

UPSTREAM = """\
// This is a generated file. Do not edit directly.
module k8s.io/kubernetes

go 1.25.0

godebug default=go1.25

require (
\tgithub.com/blang/semver/v4 v4.0.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0 // indirect
)

require github.com/google/uuid v1.6.0 // indirect

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // a comment
\tk8s.io/kubelet => ./staging/src/k8s.io/kubelet
)

replace github.com/example/fork => github.com/example/fork v1.2.3
"""

GOOD_WRAPPER = """\
module atoll.invalid/kubernetes

go 1.25.0

godebug default=go1.25

require k8s.io/kubernetes v1.35.4

replace (
\tk8s.io/api => k8s.io/api v0.35.4
\tk8s.io/client-go => k8s.io/client-go v0.35.4
\tk8s.io/kubelet => k8s.io/kubelet v0.35.4
)
"""

RELEASE = kb.Release(1, 35, 4)


def _wrapper(text: str) -> kb.GoMod:
    return kb.parse_go_mod(text, source="kubernetes/go.mod")


def test_go_mod_directives_single_line_and_blocks() -> None:
    parsed = kb.parse_go_mod(UPSTREAM, source="up/go.mod")
    assert parsed.module == "k8s.io/kubernetes"
    assert parsed.go == "1.25.0"
    assert parsed.godebug == ("default=go1.25",)
    assert parsed.requires == {
        "github.com/blang/semver/v4": "v4.0.0",
        "k8s.io/api": "v0.0.0",
        "k8s.io/client-go": "v0.0.0",
        "github.com/google/uuid": "v1.6.0",
    }
    assert parsed.replaces["k8s.io/client-go"] == "./staging/src/k8s.io/client-go"
    assert parsed.replaces["github.com/example/fork"] == "github.com/example/fork v1.2.3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("go 1.25\n", "up/go.mod: no module directive"),
        ("module m\nreplace (\n\ta v1\n)\n", "up/go.mod:3: replace without '=>'"),
    ],
)
def test_go_mod_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        kb.parse_go_mod(text, source="up/go.mod")


def test_godebug_block_is_read_in_order() -> None:
    parsed = kb.parse_go_mod(
        "module m\ngodebug (\n\tdefault=go1.25\n\tx509sha1=1\n)\n", source="m/go.mod"
    )
    assert parsed.godebug == ("default=go1.25", "x509sha1=1")


def test_staging_pins_are_the_replaces_into_staging_only() -> None:
    pins = kb.staging_pins(UPSTREAM, source="up/go.mod")
    assert pins.staging == ("k8s.io/api", "k8s.io/client-go", "k8s.io/kubelet")
    assert pins.godebug == ("default=go1.25",)
    assert pins.replaces(RELEASE) == {
        "k8s.io/api": "k8s.io/api v0.35.4",
        "k8s.io/client-go": "k8s.io/client-go v0.35.4",
        "k8s.io/kubelet": "k8s.io/kubelet v0.35.4",
    }


def test_a_go_mod_without_staging_replaces_is_refused() -> None:
    with pytest.raises(InputError, match=r"up/go.mod: no replace directive points at"):
        kb.staging_pins("module k8s.io/kubernetes\n", source="up/go.mod")


def test_a_wrapper_that_matches_passes() -> None:
    pins = kb.staging_pins(UPSTREAM, source="up/go.mod")
    kb.check_wrapper(_wrapper(GOOD_WRAPPER), pins, RELEASE, source="kubernetes/go.mod")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            ("\tk8s.io/kubelet => k8s.io/kubelet v0.35.4\n", ""),
            "replace k8s.io/kubelet => k8s.io/kubelet v0.35.4: missing",
        ),
        (
            ("k8s.io/api v0.35.4", "k8s.io/api v0.35.3"),
            "replace k8s.io/api => k8s.io/api v0.35.3: want k8s.io/api v0.35.4",
        ),
        (
            (")\n", "\tk8s.io/extra => k8s.io/extra v0.35.4\n)\n"),
            "replace k8s.io/extra => k8s.io/extra v0.35.4: not a staging module of v1.35.4",
        ),
        (
            ("godebug default=go1.25\n", ""),
            "godebug (none): want default=go1.25 as in k8s.io/kubernetes v1.35.4",
        ),
    ],
)
def test_a_wrapper_that_strays_names_each_problem(edit: tuple[str, str], problem: str) -> None:
    old, new = edit
    assert old in GOOD_WRAPPER
    pins = kb.staging_pins(UPSTREAM, source="up/go.mod")
    with pytest.raises(InputError) as raised:
        kb.check_wrapper(
            _wrapper(GOOD_WRAPPER.replace(old, new)), pins, RELEASE, source="kubernetes/go.mod"
        )
    message = str(raised.value)
    assert message.startswith("kubernetes/go.mod: does not match k8s.io/kubernetes v1.35.4")
    assert f"  {problem}" in message.splitlines()


def test_the_committed_wrapper_pins_one_release_and_its_staging_versions() -> None:
    """kubernetes/go.mod as committed: each replace is a staging module at v0.Y.Z of the
    required k8s.io/kubernetes (the build also checks it against the tag's own go.mod)."""
    wrapper = kb.parse_go_mod((ROOT / "kubernetes/go.mod").read_text(), source="go.mod")
    release = kb.wrapper_release(wrapper, source="go.mod")
    assert release.version == "v1.35.4"
    assert wrapper.godebug == ("default=go1.25",)
    assert len(wrapper.replaces) >= 30
    for module, target in wrapper.replaces.items():
        assert module.startswith("k8s.io/")
        assert target == f"{module} {release.staging_version}"
    assert (ROOT / "kubernetes/go.sum").read_text().count("k8s.io/kubernetes v1.35.4") == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v1.35.4", kb.Release(1, 35, 4)),
        ("v1.37.12", kb.Release(1, 37, 12)),
        ("1.35.4", None),
        ("v1.35", None),
        ("v1.35.4-rc.0", None),
        ("v0.35.4", None),
    ],
)
def test_release_tags(text: str, expected: kb.Release | None) -> None:
    if expected is None:
        with pytest.raises(InputError, match=r"go.mod: .* is not a Kubernetes release"):
            kb.parse_release(text, source="go.mod")
    else:
        assert kb.parse_release(text, source="go.mod") == expected


def test_a_wrapper_without_kubernetes_is_refused() -> None:
    with pytest.raises(InputError, match=r"go\.mod: does not require k8s\.io/kubernetes"):
        kb.wrapper_release(_wrapper("module m\n"), source="kubernetes/go.mod")


@pytest.mark.parametrize(
    ("go_version", "directive", "accepted"),
    [
        ("go1.26.8", "1.25.0", True),
        ("go1.26.8", "1.26.0", True),
        ("go1.26.8", "1.26.8", True),
        ("go1.26.8", "1.26.9", False),
        ("go1.26.8", "1.27", False),
        ("go1.26", "1.26.0", True),
        ("go1.25.3", "1.26.0", False),
        ("devel", "1.25.0", False),
        ("go1.26.8", None, True),
    ],
)
def test_go_accepts_a_go_directive(go_version: str, directive: str | None, accepted: bool) -> None:
    assert kb.go_accepts(go_version, directive) is accepted


@pytest.mark.parametrize(
    ("time", "date"),
    [
        ("2026-04-15T18:01:22Z", "2026-04-15T18:01:22Z"),
        ("2026-04-15T20:01:22+02:00", "2026-04-15T18:01:22Z"),
        ("2026-04-15T18:01:22.5Z", "2026-04-15T18:01:22Z"),
    ],
)
def test_build_date_is_the_release_time_in_utc(time: str, date: str) -> None:
    assert kb.build_date(time, source="info") == date


@pytest.mark.parametrize("time", ["", "yesterday", "2026-04-15T18:01:22"])
def test_a_release_time_that_is_not_one_is_an_error(time: str) -> None:
    with pytest.raises(AtollError, match=r"^info: Time"):
        kb.build_date(time, source="info")


def test_ldflags_strip_drop_the_build_id_and_set_the_version_in_both_packages() -> None:
    flags = kb.version_ldflags(RELEASE, "2026-04-15T18:01:22Z").split(" ")
    assert flags[:3] == ["-s", "-w", "-buildid="]
    sets = [flags[i + 1] for i, flag in enumerate(flags) if flag == "-X"]
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        assert f"{package}.gitVersion=v1.35.4" in sets
        assert f"{package}.gitMajor=1" in sets
        assert f"{package}.gitMinor=35" in sets
        assert f"{package}.buildDate=2026-04-15T18:01:22Z" in sets
    assert len(sets) == 8


def test_build_env_pins_the_toolchain_and_keeps_verification() -> None:
    paths = kb.GoPaths(Path("/c/go"))
    env = kb.build_env(paths, {"GOFLAGS": "-insecure", "GONOSUMDB": "*", "GONOSUMCHECK": "1"})
    assert env["CGO_ENABLED"] == "0"
    assert env["GOTOOLCHAIN"] == "local"
    assert env["GOENV"] == "off"
    assert env["GOFLAGS"] == "-mod=readonly -trimpath -buildvcs=false"
    assert env["GOMODCACHE"] == "/c/go/mod"
    assert env["GOCACHE"] == "/c/go/build"
    assert env["GOPROXY"] == kb.DEFAULT_GOPROXY
    assert "GONOSUMDB" not in env and "GONOSUMCHECK" not in env and "GOSUMDB" not in env


def test_build_env_takes_the_users_proxy_and_checksum_database() -> None:
    env = kb.build_env(
        kb.GoPaths(Path("/c/go")), {"GOPROXY": "http://127.0.0.1:3000", "GOSUMDB": "sum.x"}
    )
    assert env["GOPROXY"] == "http://127.0.0.1:3000"
    assert env["GOSUMDB"] == "sum.x"


def _key(**change: object) -> str:
    args: dict[str, object] = {
        "go_mod": b"module m\n",
        "go_sum": b"a v1 h1:x\n",
        "go_version": "go1.26.8",
        "ldflags": "-s -w",
        "tags": kb.BUILD_TAGS,
        "targets": kb.TARGETS,
    }
    args.update(change)
    return kb.cache_key(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"go_mod": b"module n\n"},
        {"go_sum": b"a v1 h1:y\n"},
        {"go_version": "go1.26.9"},
        {"ldflags": "-s"},
        {"tags": ("selinux",)},
        {"targets": ("kubelet",)},
        # the fields are length-prefixed: moving bytes between them changes the key
        {"go_mod": b"module m\na", "go_sum": b" v1 h1:x\n"},
    ],
)
def test_cache_key_follows_every_input(change: dict[str, object]) -> None:
    assert _key() == _key()
    assert len(_key()) == 64
    assert _key(**change) != _key()


def test_build_argv_uses_upstreams_tags_and_the_flags() -> None:
    plan = kb.BuildPlan(RELEASE, "go1.26.8", "-s -w", kb.BUILD_TAGS, kb.TARGETS, kb.CacheKey("k"))
    argv = plan.build_argv("kubelet", Path("/out/kubelet"))
    assert argv == [
        "build",
        "-v",
        "-tags=selinux,notest,grpcnotrace",
        "-ldflags=-s -w",
        "-o",
        "/out/kubelet",
        "k8s.io/kubernetes/cmd/kubelet",
    ]
    listing = plan.list_argv("kubectl")
    assert listing[-1] == "k8s.io/kubernetes/cmd/kubectl"
    assert "-tags=selinux,notest,grpcnotrace" in listing


@pytest.mark.parametrize(
    ("target", "output", "matches"),
    [
        ("kubelet", "Kubernetes v1.35.4\n", True),
        ("kube-apiserver", "Kubernetes v1.35.4\n", True),
        ("kubelet", "Kubernetes v0.0.0-master+$Format:%H$\n", False),
        ("kubelet", "Kubernetes v1.35.40\n", False),
        ("kubectl", "Client Version: v1.35.4\nKustomize Version: v5.7.1\n", True),
        ("kubectl", "Client Version: v1.35.3\n", False),
    ],
)
def test_a_binary_must_report_the_pinned_version(target: str, output: str, matches: bool) -> None:
    assert kb.reports_version(target, output, RELEASE) is matches


@pytest.mark.parametrize(
    ("line", "counted"),
    [
        ("k8s.io/kubernetes/pkg/kubelet", True),
        ("internal/abi", True),
        ("go: downloading k8s.io/api v0.35.4", False),
        ("# k8s.io/kubernetes/pkg/kubelet", False),
        ("pkg/kubelet/kubelet.go:12:2: undefined: x", False),
        ("", False),
    ],
)
def test_progress_counts_compiled_packages_only(line: str, counted: bool) -> None:
    assert kb.compiled_package(line) is counted


def test_default_cache_follows_atoll_cache(tmp_path: Path) -> None:
    assert default_cache({"ATOLL_CACHE": str(tmp_path)}) == tmp_path.resolve()
    assert default_cache({}) == Path.home() / ".cache" / "atoll"


def test_go_is_found_on_path_then_in_gos_own_place(tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.write_text("#!/bin/sh\n")
    go.chmod(0o755)
    assert kb.find_go(str(tmp_path)) == str(go)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert kb.find_go(str(empty), exists=lambda p: p == "/usr/local/go/bin/go") == (
        "/usr/local/go/bin/go"
    )
    with pytest.raises(ToolMissing, match=r"^go: not found on \$PATH"):
        kb.find_go(str(empty), exists=lambda p: False)


def _entry(directory: Path, names: tuple[str, ...], record: bool = True) -> None:
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_bytes(name.encode())
    if record:
        (directory / "build.json").write_text("{}\n")


def test_a_cache_entry_counts_only_when_complete(tmp_path: Path) -> None:
    plan = kb.BuildPlan(RELEASE, "go1.26.8", "", (), kb.TARGETS, kb.CacheKey("k"))
    _entry(tmp_path / "whole", kb.TARGETS)
    _entry(tmp_path / "no-record", kb.TARGETS, record=False)
    _entry(tmp_path / "one-missing", kb.TARGETS[:-1])
    hit = kb._cached(tmp_path / "whole", plan)
    assert hit is not None and hit.from_cache and hit.version == "v1.35.4"
    assert set(hit.binaries) == set(kb.TARGETS)
    assert kb._cached(tmp_path / "no-record", plan) is None
    assert kb._cached(tmp_path / "one-missing", plan) is None


def test_leftovers_of_an_interrupted_build_are_removed_entries_are_not(tmp_path: Path) -> None:
    _entry(tmp_path / "abc", kb.TARGETS)
    _entry(tmp_path / ".abc.x1.partial" / "entry", kb.TARGETS)
    kb._remove_partials(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc"]


def test_output_gets_executable_copies(tmp_path: Path) -> None:
    _entry(tmp_path / "cache", kb.TARGETS)
    binaries = {name: tmp_path / "cache" / name for name in kb.TARGETS}
    built = kb.KubernetesBinaries("v1.35.4", kb.CacheKey("k"), tmp_path / "cache", binaries, True)
    out = kb.copy_out(built, tmp_path / "out")
    assert out.directory == tmp_path / "out"
    for name, path in out.binaries.items():
        assert path == tmp_path / "out" / name
        assert path.read_bytes() == name.encode()
        assert path.stat().st_mode & 0o777 == 0o755


def test_cluster_build_is_a_verb() -> None:
    parser = build_parser()
    args = parser.parse_args(["cluster", "build", "--output", "bin"])
    assert isinstance(args, argparse.Namespace)
    assert args.output == Path("bin")
    assert callable(args.handler)
