"""The TOML config file: keys are NodeConfig's fields, plus `listen`, `connect` and `share`."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from gnut.runtime.config import NodeConfig, parse_hostport


def load_config_file(path: Path) -> dict:
    """Read a TOML config file into NodeConfig keyword arguments.

    Keys are NodeConfig field names; `listen` and `connect` take "host:port" strings.

    Raises:
        ValueError: for an unknown key or a malformed value.
    """
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    known = {f.name for f in fields(NodeConfig)}
    out: dict = {}
    for key, value in raw.items():
        if key == "listen":
            out["listen_host"], out["listen_port"] = parse_hostport(str(value))
        elif key == "connect":
            out["connect"] = [parse_hostport(str(v)) for v in value]
        elif key == "share":
            out["share_dirs"] = [Path(v) for v in (value if isinstance(value, list) else [value])]
        elif key in known:
            out[key] = value
        else:
            raise ValueError(f"{path}: unknown setting {key!r}")
    return out
