"""NodeConfig from options and TOML files; address parsing."""

from __future__ import annotations

import pytest

from gnut.app.configfile import load_config_file
from gnut.runtime.config import NodeConfig, parse_hostport


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
