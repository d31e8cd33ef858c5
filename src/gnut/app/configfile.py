"""The TOML config file: keys are NodeConfig's fields, plus `listen`, `connect` and `share`.

Strategy: the schema is NodeConfig itself (its fields, their types and their "doc" metadata),
so a new setting is documented and checked the moment it is added there. Keys may be written
as the command-line flags are (`max-peers`) or with underscores (`max_peers`): both mean the
same setting. Every error names the file, the line of the key (TOML's own line for a syntax
error) and the key, and is raised before the node starts.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path

from gnut.runtime.config import ConfigError, NodeConfig, parse_hostport

# Keys the file spells differently from NodeConfig: key -> (field(s) it sets, its doc).
ALIASES = {
    "listen": ("listen_host/listen_port", 'address to listen on, "HOST:PORT" (port 0: any free port)'),
    "connect": ("connect", 'peers to dial at start, a list of "HOST:PORT" strings'),
    "share": ("share_dirs", "folders to share, a path or a list of paths"),
}
# Fields not settable from the file (`listen` covers the two address halves).
HIDDEN = {"listen_host", "listen_port", "connect", "share_dirs"}


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message names file, line and key."""


def _key_line(text: str, key: str) -> int | None:
    """Line number (1-based) where `key` is assigned in the TOML text, if it can be found."""
    spellings = {key, key.replace("_", "-"), key.replace("-", "_")}
    rx = re.compile(r"^\s*(?:" + "|".join(re.escape(k) for k in spellings) + r"|\"(?:" +
                    "|".join(re.escape(k) for k in spellings) + r")\")\s*=")
    for n, line in enumerate(text.splitlines(), 1):
        if rx.match(line):
            return n
    return None


def _where(path: Path, text: str, key: str) -> str:
    line = _key_line(text, key)
    return f"{path}:{line}" if line else str(path)


def settable_keys() -> dict[str, str]:
    """Every key the file accepts (underscore spelling) -> its one-line doc."""
    out = {k: doc for k, (_, doc) in ALIASES.items()}
    for f in fields(NodeConfig):
        if f.name not in HIDDEN:
            out[f.name] = f.metadata.get("doc", "")
    return out


def _address(value, key: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ConfigError(key, f'must be a "HOST:PORT" string, not {value!r}')
    host, port = parse_hostport(value)
    if host.isdigit():  # `listen = "16349"` means a port, never the address 0.0.63.221
        raise ConfigError(key, f'{value!r} has no host: write "HOST:PORT", e.g. "127.0.0.1:{host}"')
    return host, port


def load_config_file(path: Path) -> dict:
    """Read a TOML config file into NodeConfig keyword arguments, checked.

    Keys are NodeConfig field names (with `_` or `-`); `listen` and `connect` take "host:port"
    strings, `share` a path or a list of paths.

    Raises:
        ConfigFileError: the file cannot be read, is not TOML, has an unknown key or a value of
            the wrong type (the message names the file, the line and the key).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read the config file: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    known = {f.name for f in fields(NodeConfig)} - HIDDEN
    out: dict = {}
    for written, value in raw.items():
        key = written.replace("-", "_")
        try:
            if key == "listen":
                out["listen_host"], out["listen_port"] = _address(value, "listen")
            elif key == "connect":
                values = value if isinstance(value, list) else [value]
                out["connect"] = [_address(v, "connect") for v in values]
            elif key == "share":
                values = value if isinstance(value, list) else [value]
                if not all(isinstance(v, str) and v for v in values):
                    raise ConfigError("share", f"must be a path string or a list of them, not {value!r}")
                out["share_dirs"] = [Path(v).expanduser() for v in values]
            elif key in known:
                out[key] = value  # checked (and paths' ~ expanded) by NodeConfig below and at start
            else:
                near = difflib.get_close_matches(key, settable_keys(), n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigFileError(f"{_where(path, text, written)}: unknown setting {written!r} "
                                      f"({hint}`gnut config --defaults` lists every setting)")
        except (ConfigError, ValueError) as exc:
            if isinstance(exc, ConfigFileError):
                raise
            detail = exc.detail if isinstance(exc, ConfigError) else str(exc)
            raise ConfigFileError(f"{_where(path, text, written)}: setting {written!r} {detail}") from None
    # Types and ranges of the plain keys, checked now so the error can name the file and line.
    try:
        NodeConfig(**{"home": Path("."), **out})
    except ConfigError as exc:
        key = exc.key if exc.key not in ("listen_host", "listen_port") else "listen"
        raise ConfigFileError(f"{_where(path, text, key)}: setting {key!r} {exc.detail}") from None
    return out


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value).__name__)


def defaults_toml() -> str:
    """A commented TOML file of every setting at its default; loading it back changes nothing."""
    cfg = NodeConfig()
    lines = ["# gnut node configuration (gnut node --config FILE). Every setting, at its default.",
             "# Keys may be written with - or _ (max-peers = max_peers); command-line flags use -.", ""]
    lines += [f"# {ALIASES['listen'][1]}", f'listen = "{cfg.listen_host}:{cfg.listen_port}"', ""]
    lines += [f"# {ALIASES['connect'][1]}", "connect = []", ""]
    lines += [f"# {ALIASES['share'][1]}", "share = []", ""]
    for f in fields(NodeConfig):
        if f.name in HIDDEN:
            continue
        lines.append(f"# {f.metadata.get('doc', '')}")
        value = getattr(cfg, f.name)
        if f.name == "download_dir":
            lines.append(f'# {f.name} = "{cfg.home}/downloads"')
        elif f.default is None and f.default_factory is MISSING:
            lines.append(f'# {f.name} = "..."   (not set)')
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
