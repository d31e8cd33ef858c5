"""NodeConfig from options and TOML files; address parsing."""

from __future__ import annotations

import pytest

from gnut.app.configfile import load_config_file
from gnut.runtime.config import ConfigError, NodeConfig, parse_hostport


@pytest.mark.parametrize(
    "text, expected",
    [("127.0.0.1:6346", ("127.0.0.1", 6346)), ("localhost", ("localhost", 6346)), ("[::1]:7000", ("::1", 7000)),
     (" 127.0.0.1:0 ", ("127.0.0.1", 0))],
)
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:notaport", "127.0.0.1:70000", ":6346", "127.0.0.1:-1"])
def test_parse_hostport_rejects(text):
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_config_file(tmp_path):
    f = tmp_path / "gnut.toml"
    f.write_text('listen = "127.0.0.1:7001"\nconnect = ["127.0.0.1:7002", "127.0.0.1:7003"]\n'
                 'share = "/srv/music"\nmode = "leaf"\nmax_peers = 5\n')
    cfg = NodeConfig(**load_config_file(f), home=tmp_path)
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 7001)
    assert cfg.connect == [("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    assert [str(p) for p in cfg.share_dirs] == ["/srv/music"]
    assert cfg.mode == "leaf" and cfg.max_peers == 5
    assert cfg.download_dir == tmp_path / "downloads"


def test_config_file_rejects_unknown_keys_and_modes(tmp_path):
    f = tmp_path / "gnut.toml"
    f.write_text("colour = 3\n")
    with pytest.raises(ValueError, match="unknown setting 'colour'"):
        load_config_file(f)
    with pytest.raises(ValueError, match="mode"):
        NodeConfig(mode="hub", home=tmp_path)


@pytest.mark.parametrize("kw, msg", [
    ({"max_peers": "ten"}, "max_peers: must be an integer, not 'ten'"),
    ({"max_peers": True}, "max_peers: must be an integer, not True"),
    ({"max_peers": -1}, "max_peers: must not be negative, not -1"),
    ({"firewalled": "yes"}, "firewalled: must be true or false, not 'yes'"),
    ({"dq_hop_wait": "2"}, "dq_hop_wait: must be a number, not '2'"),
    ({"dq_hop_wait": 0}, "dq_hop_wait: must be above 0"),
    ({"connect": ["127.0.0.1:1"]}, 'connect: must be a list of "HOST:PORT" strings'),
    ({"connect": [("127.0.0.1", 0)]}, "connect: must be a list"),
    ({"share_dirs": "/music"}, "share_dirs: must be a list of path strings"),
    ({"listen_port": 70000}, "listen_port: must be in 0..65535, not 70000"),
    ({"upload_slots": 0}, "upload_slots: must be at least 1, not 0"),
    ({"loop": "trio"}, "loop: must be one of auto, uvloop, asyncio, not 'trio'"),
    ({"log_file": 3}, "log_file: must be a path string, not 3"),
])
def test_node_config_rejects_wrong_types_naming_the_key(tmp_path, kw, msg):
    with pytest.raises(ConfigError) as exc:
        NodeConfig(home=tmp_path, **kw)
    assert str(exc.value).startswith(msg)


def test_node_config_converts_what_it_can(tmp_path):
    cfg = NodeConfig(home=str(tmp_path), share_dirs=["/a"], connect=[["h", 1]], dq_hop_wait=3, log_file="x.log")
    assert cfg.home == tmp_path and cfg.share_dirs[0].name == "a" and cfg.connect == [("h", 1)]
    assert cfg.dq_hop_wait == 3.0 and isinstance(cfg.dq_hop_wait, float) and cfg.log_file.name == "x.log"


def test_every_setting_is_documented_and_listed():
    from dataclasses import fields

    from gnut.app.configfile import defaults_toml, settable_keys

    assert all(f.metadata.get("doc") for f in fields(NodeConfig))
    text = defaults_toml()
    for key in settable_keys():
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key


def test_dashes_and_underscores_are_the_same_key(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text('max-peers = 5\nout_links = 2\nupload-slots = 3\n')
    assert load_config_file(f) == {"max_peers": 5, "out_links": 2, "upload_slots": 3}
