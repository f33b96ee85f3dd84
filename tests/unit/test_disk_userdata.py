"""First-boot user data: validation naming file and key, the plan, applying once."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from atoll.agent.provision import RECORD_PATH, main, plan, provision
from atoll.wire.userdata import UserDataError, parse_user_data

GOOD = b"""
[node]
hostname = "edge-1"
[time]
ntp = ["10.0.2.2", "pool.ntp.org"]
[fleet]
controller = "https://10.0.2.2:8443"
interval = 2
labels = { zone = "a" }
[updates]
server = "http://10.0.2.2:8080"
channel = "beta"
[credentials]
"node.key" = "KEY"
[[files]]
path = "/etc/motd"
content = "aGVsbG8="
encoding = "base64"
mode = "0640"
"""


def test_valid_user_data_becomes_a_plan() -> None:
    data = parse_user_data(GOOD, "node.toml")
    writes = {w.path: w for w in plan(data)}
    assert writes["etc/hostname"].content == b"edge-1\n"
    assert (
        b"NTP=10.0.2.2 pool.ntp.org" in writes["etc/systemd/timesyncd.conf.d/50-atoll.conf"].content
    )
    fleet = tomllib.loads(writes["etc/atoll/fleet.toml"].content.decode())
    assert fleet == {
        "controller": "https://10.0.2.2:8443",
        "server": "http://10.0.2.2:8080",
        "channel": "beta",
        "interval": 2.0,
        "labels": {"zone": "a"},
    }
    assert writes["etc/atoll/credentials/node.key"].mode == 0o600
    assert (writes["etc/motd"].content, writes["etc/motd"].mode) == (b"hello", 0o640)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'[node]\nhostname = "Bad_Host"\n', "node.toml: [node].hostname: 'Bad_Host'"),
        (b'[node]\nname = "x"\n', "node.toml: [node].name: unknown key"),
        (b'hostname = "x"\n', "node.toml: hostname: unknown key"),
        (b'[time]\nntp = "pool"\n', "node.toml: [time].ntp:"),
        (b'[fleet]\ncontroller = "ftp://x"\n', "node.toml: [fleet].controller:"),
        (b'[fleet]\ncontroller = "http://a:1,ftp://b"\n', "node.toml: [fleet].controller:"),
        (b'[fleet]\ncontroller = "http://a:1,"\n', "node.toml: [fleet].controller:"),
        (b"[fleet]\ninterval = 0\n", "node.toml: [fleet].interval: 0 must be"),
        (b'[fleet]\nlabels = { zone = "a b" }\n', "node.toml: [fleet].labels.zone:"),
        (b'[updates]\nserver = "x"\n', "node.toml: [updates].server: 'x'"),
        (b'[updates]\nchannel = "Stable!"\n', "node.toml: [updates].channel:"),
        (b'[credentials]\n"../x" = "k"\n', "node.toml: [credentials].../x: name"),
        (b'[[files]]\npath = "/usr/bin/x"\ncontent = ""\n', "node.toml: [[files]][0].path:"),
        (
            b'[[files]]\npath = "/etc/x"\ncontent = "!"\nencoding = "base64"\n',
            "[[files]][0].content: not valid base64",
        ),
        (b'[[files]]\npath = "/etc/x"\ncontent = ""\nmode = "999"\n', "[[files]][0].mode:"),
        (b"[node\n", "node.toml: not valid TOML"),
    ],
)
def test_errors_name_file_and_key(text: bytes, message: str) -> None:
    with pytest.raises(UserDataError) as caught:
        parse_user_data(text, "node.toml")
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(UserDataError) as caught:
        parse_user_data(b'[node]\nhostname = "-x"\n[time]\nntp = 5\n', "u.toml")
    assert len(caught.value.problems) == 2


def test_provision_applies_once_and_records(tmp_path: Path) -> None:
    fw_cfg = tmp_path / "fw_cfg_raw"
    fw_cfg.write_bytes(GOOD)
    root = tmp_path / "root"
    record = provision(root, fw_cfg)
    assert (root / "etc/hostname").read_text() == "edge-1\n"
    assert record["source"] == f"fw_cfg {fw_cfg}"
    assert "/etc/atoll/credentials/node.key" in [a["path"] for a in record["applied"]]
    assert json.loads((root / RECORD_PATH).read_text())["sha256"] == record["sha256"]
    # A later boot with different user data attached changes nothing.
    fw_cfg.write_bytes(b'[node]\nhostname = "other"\n')
    (root / "etc/hostname").write_text("changed-by-admin\n")
    assert provision(root, fw_cfg) == record
    assert (root / "etc/hostname").read_text() == "changed-by-admin\n"


def test_embedded_user_data_is_used_without_fw_cfg(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/atoll").mkdir(parents=True)
    (root / "var/lib/atoll/user-data.toml").write_bytes(b'[node]\nhostname = "emb"\n')
    record = provision(root, tmp_path / "absent")
    assert (root / "etc/hostname").read_text() == "emb\n"
    assert record["source"].endswith("var/lib/atoll/user-data.toml")


def test_no_user_data_is_recorded_too(tmp_path: Path) -> None:
    record = provision(tmp_path, tmp_path / "absent")
    assert record["source"] == "none" and (tmp_path / RECORD_PATH).exists()


def test_rejected_user_data_applies_nothing(tmp_path: Path) -> None:
    fw_cfg = tmp_path / "raw"
    fw_cfg.write_bytes(b'[node]\nhostname = "ok"\n[time]\nntp = 1\n')
    root = tmp_path / "root"
    assert main(["--root", str(root), "--fw-cfg", str(fw_cfg)]) == 2
    assert not (root / "etc/hostname").exists() and not (root / RECORD_PATH).exists()


def test_several_controller_replicas_are_one_comma_separated_value() -> None:
    text = GOOD.replace(
        b'"https://10.0.2.2:8443"', b'"https://10.0.2.2:8443,https://10.0.2.3:8443"'
    )
    writes = {w.path: w for w in plan(parse_user_data(text, "node.toml"))}
    fleet = tomllib.loads(writes["etc/atoll/fleet.toml"].content.decode())
    assert fleet["controller"] == "https://10.0.2.2:8443,https://10.0.2.3:8443"
