"""Hostile manifests (issue 19, items 6-8): each refused at load time, exit 2, key named.

Sources stay inside the tree of the manifest that names them unless the user
allows a directory; values that end up in line-oriented files carry no control
characters; accounts are checked against the base system at validation; every
value is bounded (size, length, depth) and an error never repeats a huge value.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from atoll import cli
from atoll.errors import EXIT_BAD_INPUT, ManifestError
from atoll.manifest import load_manifest
from atoll.manifest.read import MAX_DEPTH, MAX_MANIFEST_BYTES, MAX_STRING

HEAD = '[image]\nname = "x"\nversion = "1"\n'


def problems_of(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifest(path, **kwargs)  # type: ignore[arg-type]
    assert exc.value.exit_code == EXIT_BAD_INPUT
    return exc.value.problems


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``site/`` (the manifest's directory, with ``motd``) next to ``outside/secret``."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "motd").write_text("hello\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("root:$6$hash:::\n")
    return tmp_path


def source_manifest(site: Path, source: str) -> Path:
    path = site / "m.toml"
    path.write_text(HEAD + f'[[files]]\npath = "/etc/x"\nsource = "{source}"\n')
    return path


# --- item 6: sources ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    ["{outside}/secret", "../outside/secret", "link", "sub/../../outside/secret", "linkdir/secret"],
)
def test_source_outside_the_manifest_tree_is_refused(tree: Path, source: str) -> None:
    site = tree / "site"
    (site / "sub").mkdir()
    (site / "link").symlink_to(tree / "outside" / "secret")
    (site / "linkdir").symlink_to(tree / "outside")
    path = source_manifest(site, source.format(outside=tree / "outside"))
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert "[[files]]" in problems[0] and "source" in problems[0], problems
    assert "outside" in problems[0] and "--allow-source-outside" in problems[0], problems
    # The explicit opt-in allows exactly that directory.
    allowed = load_manifest(path, allowed_sources=(tree / "outside",))
    assert allowed.files[0].source == tree / "outside" / "secret"


def test_source_inside_the_tree_through_a_symlink_is_fine(tree: Path) -> None:
    site = tree / "site"
    (site / "alias").symlink_to("motd")
    m = load_manifest(source_manifest(site, "alias"))
    assert m.files[0].source == site / "motd"


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_source_must_be_a_regular_file(tree: Path, kind: str) -> None:
    site = tree / "site"
    if kind == "directory":
        (site / "thing").mkdir()
    else:
        os.mkfifo(site / "thing")
    problems = problems_of(source_manifest(site, "thing"))
    assert any("source" in p and "not a regular file" in p for p in problems), problems


def test_a_parents_source_is_confined_to_the_parents_directory(tree: Path) -> None:
    # base/ holds the parent; it names ../outside/secret: outside base/, though the
    # child's directory (tree) holds it.
    (tree / "base").mkdir()
    (tree / "base" / "base.toml").write_text(
        HEAD + '[[files]]\npath = "/etc/x"\nsource = "../outside/secret"\n'
    )
    child = tree / "site.toml"
    child.write_text('extends = "base/base.toml"\n')
    problems = problems_of(child)
    assert len(problems) == 1 and "base.toml" in problems[0] and "source" in problems[0]


def test_compose_refuses_an_outside_source_with_exit_2_before_any_build(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = source_manifest(tree / "site", str(tree / "outside" / "secret"))
    code = cli.main(["compose", str(path), "--repo", str(tree / "repo")])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "source" in err and "outside" in err
    assert not (tree / "repo").exists()


def test_compose_takes_the_opt_in_flag(tree: Path) -> None:
    parser = cli.build_parser()
    flags = ["--allow-source-outside", "/a", "--allow-source-outside", "/b"]
    args = parser.parse_args(["compose", "m.toml", "--repo", "r", *flags])
    assert args.allow_source_outside == [Path("/a"), Path("/b")]


# --- item 7: injection and accounts ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[users]]\nname = "svc"\nshell = "/bin/sh\\nevil:x:0:0::/:/bin/sh"\n', "shell"),
        ('[[users]]\nname = "svc"\nhome = "/srv/svc\\n"\n', "home"),
        ('[[users]]\nname = "svc"\nhome = "/srv/a:b"\n', "home"),
        ('[[users]]\nname = "svc"\nhome = "/srv/a b"\n', "home"),
        ('[[users]]\nname = "svc"\nhome = "srv"\n', "home"),
        ('[[users]]\nname = "svc"\ngroup = "g\\nevil"\n', "group"),
        ('[[users]]\nname = "svc"\ngroups = ["adm\\n"]\n', "groups"),
        ('[[users]]\nname = "svc\\n"\n', "name"),
        ('[[groups]]\nname = "g\\n"\n', "name"),
        ('[sysctl]\n"net.ipv4.ip_forward" = "1\\nkernel.sysrq = 1"\n', "sysctl"),
        ('[sysctl]\n"net.ipv4.ip_forward\\n" = 1\n', "sysctl"),
        ('[image]\nname = "x\\n"\nversion = "1"\n', "name"),
        ('[image]\nname = "x"\nversion = "1"\ndescription = "a\\u001bb"\n', "description"),
        ('[units]\nenable = ["a.service\\n"]\n', "enable"),
        ('[packages]\ninclude = ["systemd\\n"]\n', "include"),
        ('[kernel]\narguments = ["quiet\\u0000"]\n', "arguments"),
        ('[kernel]\npackage = "linux\\n"\n', "package"),
        ('[distribution]\nmirror = "http://x/\\n"\n', "mirror"),
        ('[distribution]\nmirror = "http://x/ bookworm main"\n', "mirror"),
        ('[distribution]\nsuite = "bookworm main"\n', "suite"),
        ('[distribution]\ncomponents = ["main\\ncontrib"]\n', "components"),
        ('[[files]]\npath = "/etc/x\\n"\ncontent = ""\n', "path"),
        ('[[files]]\npath = "/etc/x"\ncontent = ""\nowner = "root\\n"\n', "owner"),
        ('[strip]\npaths = ["/usr/x\\n"]\n', "paths"),
    ],
)
def test_control_characters_and_separators_are_refused(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(text if text.startswith("[image]") else HEAD + text)
    problems = problems_of(path)
    assert any(key in p for p in problems), problems
    assert all(p.startswith("m.toml") or "m.toml" in p for p in problems), problems
    assert "\n" not in "".join(problems)  # the value is quoted, never written raw


def test_inline_content_may_hold_newlines(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(HEAD + '[[files]]\npath = "/etc/x"\ncontent = "a\\nb\\tc\\n"\n')
    assert load_manifest(path).files[0].content == "a\nb\tc\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[users]]\nname = "root"\n', "'root' is reserved"),
        ('[[users]]\nname = "nobody"\n', "'nobody' is reserved"),
        ('[[users]]\nname = "_apt"\n', "'_apt' is reserved"),
        ('[[users]]\nname = "systemd-network"\n', "'systemd-network' is reserved"),
        ('[[users]]\nname = "svc"\nuid = 42\n', "uid 42"),
        ('[[users]]\nname = "svc"\nuid = 65534\n', "uid 65534"),
        ('[[users]]\nname = "svc"\nuid = 998\n', "uid 998 is taken by 'systemd-network'"),
        ('[[groups]]\nname = "g"\ngid = 0\n', "gid 0"),
        ('[[groups]]\nname = "adm"\ngid = 500\n', "'adm' is reserved"),
        ('[[users]]\nname = "a"\nuid = 500\n[[users]]\nname = "b"\nuid = 500\n', "uid 500"),
        ('[[groups]]\nname = "a"\ngid = 500\n[[groups]]\nname = "b"\ngid = 500\n', "gid 500"),
        ('[[users]]\nname = "a"\n[[users]]\nname = "a"\nshell = "/bin/sh"\n', "duplicate"),
        ('[[groups]]\nname = "a"\n[[groups]]\nname = "a"\n', "duplicate"),
        (
            '[[files]]\npath = "/etc/x"\ncontent = "1"\n'
            '[[files]]\npath = "/etc/x"\ncontent = "2"\n',
            "duplicate",
        ),
    ],
)
def test_accounts_are_checked_at_validation(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(HEAD + text)
    problems = problems_of(path)
    assert any(expected in p for p in problems), problems


def test_a_child_may_still_replace_its_parents_user(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(HEAD + '[[users]]\nname = "svc"\nuid = 500\n')
    (tmp_path / "site.toml").write_text(
        'extends = "base.toml"\n[[users]]\nname = "svc"\nuid = 501\n'
    )
    m = load_manifest(tmp_path / "site.toml")
    assert [(u.name, u.uid) for u in m.users] == [("svc", 501)]


# --- item 8: limits ----------------------------------------------------------------------


def test_a_long_value_is_refused_and_not_repeated(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(HEAD + f'[[users]]\nname = "svc"\nshell = "/{"a" * MAX_STRING}"\n')
    problems = problems_of(path)
    assert len(problems) == 1 and "shell" in problems[0], problems
    assert f"longer than {MAX_STRING}" in problems[0]
    assert len(problems[0]) < 300 and f"({MAX_STRING + 1} characters)" in problems[0]


def test_an_unknown_huge_key_is_not_repeated(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(HEAD + f'"{"k" * 100_000}" = 1\n')
    problems = problems_of(path)
    assert all(len(p) < 300 for p in problems), [len(p) for p in problems]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_is_an_input_error(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "m.toml"
    path.write_text(HEAD + "[sysctl]\nx = " + "[" * depth + "]" * depth + "\n")
    problems = problems_of(path)
    assert len(problems) == 1 and "m.toml" in problems[0], problems
    assert "nested" in problems[0], problems


def test_a_huge_manifest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(HEAD + "# " + "x" * MAX_MANIFEST_BYTES + "\n")
    problems = problems_of(path)
    assert len(problems) == 1 and f"larger than {MAX_MANIFEST_BYTES}" in problems[0], problems


@pytest.mark.parametrize("kind", ["directory", "fifo", "huge"])
def test_extends_reads_only_a_bounded_regular_file(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "parent"
    if kind == "directory":
        target.mkdir()
        expected = "not a regular file"
    elif kind == "fifo":
        os.mkfifo(target)  # opening it for reading would block forever
        expected = "not a regular file"
    else:
        target.write_text(HEAD + "#" * MAX_MANIFEST_BYTES)
        expected = f"larger than {MAX_MANIFEST_BYTES}"
    child = tmp_path / "m.toml"
    child.write_text('extends = "parent"\n')
    problems = problems_of(child)
    assert len(problems) == 1, problems
    assert "extends" in problems[0] and expected in problems[0], problems


def test_mode_0000_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        HEAD
        + textwrap.dedent(
            """
            [[files]]
            path = "/etc/x"
            content = ""
            mode = "0000"
            """
        )
    )
    assert load_manifest(path).files[0].mode == 0
