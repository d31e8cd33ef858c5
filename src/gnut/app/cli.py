"""Command line: options -> NodeConfig -> node / control client. No protocol logic here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import gnut
from gnut.app.configfile import ConfigFileError, defaults_toml, load_config_file
from gnut.constants import DEFAULT_PORT
from gnut.errors import FastPathMissing
from gnut.protocol.bandwidth import parse_rate
from gnut.runtime.config import MODES, ConfigError, NodeConfig, default_home, parse_hostport
from gnut.runtime.loops import LOOP_CHOICES, loop_name

# NodeConfig.verbose from this level on logs every routed message (node.py's "gnut.flow" logger).
FLOW_VERBOSITY = 2
# Exit status after Ctrl-C in a client command (128 + SIGINT, the shell convention).
EXIT_INTERRUPTED = 130
# Exit status when the compiled fast path is missing (an installation problem, like bad usage).
EXIT_NO_FASTPATH = 2


def version_text() -> str:
    from gnut.fastpath import IMPLEMENTATION

    return f"gnut {gnut.__version__} (fastpath: {IMPLEMENTATION}, loop: {loop_name('auto')})"


def _address(text: str, lowest_port: int) -> tuple[str, int]:
    try:
        host, port = parse_hostport(text)
    except ValueError:
        host, port = "", -1
    if not host or not lowest_port <= port < 65536:
        raise argparse.ArgumentTypeError(f"bad address {text!r}: expected HOST:PORT with a port in "
                                         f"{lowest_port}..65535")
    return host, port


def _hostport(text: str) -> tuple[str, int]:
    """A peer address for --connect (port 1..65535)."""
    return _address(text, 1)


def _listen_address(text: str) -> tuple[str, int]:
    """An address for --listen (port 0 lets the system pick a free one)."""
    return _address(text, 0)


def _size(text: str) -> int:
    """A file size for --min-size/--max-size: 700k, 10M, 1.5G, or bytes."""
    from gnut.app.searchview import parse_size

    return parse_size(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gnut", description="A Gnutella 0.6 servent.")
    p.add_argument("--version", action="version", version=version_text())
    p.add_argument("--home", type=Path, default=None, help="state folder (default $GNUT_HOME or ~/.gnut)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="node: -v logs every message routed (connections and departures are always logged); "
                        "clients: -v logs their connections")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    n = sub.add_parser("node", help="run a servent")
    n.add_argument("--listen", type=_listen_address, default=None, metavar="HOST:PORT",
                   help=f"address to listen on (default 0.0.0.0:{DEFAULT_PORT}: every interface)")
    n.add_argument("--connect", type=_hostport, action="append", default=[], metavar="HOST:PORT",
                   help="peer to connect to (repeatable)")
    n.add_argument("--share", type=Path, action="append", default=[], metavar="DIR", help="folder to share (repeatable)")
    n.add_argument("--mode", choices=MODES, default=None, help="auto (default: a leaf that becomes an ultrapeer when reachable), ultrapeer, "
                        "leaf, or flood (classic all-relay)")
    n.add_argument("--loop", choices=LOOP_CHOICES, default=None, help="event loop (default auto: uvloop)")
    n.add_argument("--max-peers", type=int, default=None, metavar="N", help="ultrapeer/flood links accepted (default 32)")
    n.add_argument("--max-leaves", type=int, default=None, metavar="N", help="leaves an ultrapeer takes (default 30)")
    n.add_argument("--out-links", type=int, default=None, metavar="N", help="links to keep dialled (default 3)")
    n.add_argument("--firewalled", action="store_true", default=None, help="act as firewalled: downloads from us need PUSH")
    n.add_argument("--no-tls", action="store_false", default=None, dest="tls",
                   help="neither offer nor accept TLS on links")
    n.add_argument("--download-dir", type=Path, default=None, metavar="DIR")
    n.add_argument("--max-upload-rate", type=_rate, default=None, metavar="RATE",
                   help="bytes/s for all uploads together, e.g. 200k or 1.5M (default 0: unlimited)")
    n.add_argument("--max-download-rate", type=_rate, default=None, metavar="RATE",
                   help="bytes/s for all downloads together, e.g. 200k or 1.5M (default 0: unlimited)")
    n.add_argument("--no-control", action="store_true", help="do not serve the local control API")
    n.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML file with the same settings (`gnut config --defaults` prints them all)")
    n.add_argument("--log-file", type=Path, default=None, metavar="PATH", help="also write the log to PATH")
    n.add_argument("--uhc", type=_hostport, action="append", default=[], metavar="HOST:PORT",
                   help="UDP host cache to ask for peers when we have none (repeatable)")
    n.add_argument("--gwc", action="append", default=[], metavar="URL",
                   help="GWebCache (http://...) to ask for peers when we have none (repeatable)")
    n.add_argument("--bootstrap", action="store_true", default=None,
                   help="also use the shipped PUBLIC UHC/GWebCache lists (contacts public hosts)")
    n.add_argument("--hostiles", type=Path, default=None, metavar="FILE",
                   help="addresses/CIDRs never to connect with, one per line (read with $GNUT_HOME/hostiles.txt)")
    n.add_argument("--dht", action="store_true", default=None, help="join the Gnutella DHT (Mojito, UDP on the listen port)")
    n.add_argument("--dht-bootstrap", type=_hostport, action="append", default=[], metavar="HOST:PORT",
                   help="a DHT node to bootstrap from (repeatable; implies --dht)")
    n.add_argument("-v", "--verbose", action="count", default=0, dest="node_verbose",
                   help="log every message routed (its type, peer, TTL/hops and the decision)")

    s = sub.add_parser("search", help="search the network: a live table of files, numbered for `gnut get N`")
    s.add_argument("words", nargs="+", metavar="WORD", help="search words (no quotes needed)")
    s.add_argument("--connect", type=_hostport, action="append", default=[], metavar="HOST:PORT")
    s.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="longest the search runs (default 10, config key search_timeout)")
    s.add_argument("--quiet", type=float, default=None, metavar="S",
                   help="end early once no result came for S seconds (default 3, config key search_quiet)")
    s.add_argument("--max-results", type=int, default=100, metavar="N", help="files (rows) shown at most")
    s.add_argument("--min-size", type=_size, default=None, metavar="SIZE", help="e.g. 700k, 10M, 1.5G")
    s.add_argument("--max-size", type=_size, default=None, metavar="SIZE")
    s.add_argument("--ext", action="append", default=[], metavar="EXT",
                   help="only these extensions (repeatable or a comma list: --ext mp3,ogg)")
    s.add_argument("--sort", choices=("sources", "size", "name"), default="sources")
    s.add_argument("--show-filtered", action="store_true", help="also show results filtered as spam, with the reason")
    s.add_argument("--spam-list", type=Path, default=None, metavar="FILE",
                   help="more known-spam SHA-1s (one urn or base32 a line), besides $GNUT_HOME/spam_sha1.txt")
    s.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML file for search_timeout/search_quiet (default $GNUT_HOME/config.toml if present)")
    s.add_argument("--json", action="store_true", help="one JSON object per file row (final state)")
    s.add_argument("--loop", choices=LOOP_CHOICES, default="auto")

    g = sub.add_parser("get", help="download a file by urn:sha1, magnet link, or row N of the last search",
                       description="With a node running, the download is queued in the node: Ctrl-C only "
                                   "stops watching it (gnut downloads, pause, resume, cancel).")
    g.add_argument("target", metavar="URN|MAGNET|N", help="urn:sha1:..., a magnet link, or 3 / #3 (last search's row)")
    g.add_argument("--connect", type=_hostport, action="append", default=[], metavar="HOST:PORT")
    g.add_argument("--out", type=Path, default=Path("."), metavar="DIR")
    g.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds to look for sources (stand-alone: for the whole download)")
    g.add_argument("--json", action="store_true", help="JSON progress lines on stdout instead of a progress line")
    g.add_argument("--loop", choices=LOOP_CHOICES, default="auto")

    dls = sub.add_parser("downloads", help="list the running node's downloads (id, state, progress, speed, sources)")
    dls.add_argument("--json", action="store_true", help="one JSON object per download")
    for op, what in (("pause", "pause a download (its partial data is kept)"),
                     ("resume", "resume a paused or failed download"),
                     ("cancel", "cancel a download and delete its partial data")):
        q = sub.add_parser(op, help=what)
        q.add_argument("id", metavar="ID", help="download id from `gnut downloads` (3 or #3)")

    st = sub.add_parser("status", help="role, uptime, traffic (bytes and rates), peers and transfers of the node")
    st.add_argument("--json", action="store_true")
    sub.add_parser("stop", help="stop the running node (BYE 200 to its peers, clean exit)")
    sh = sub.add_parser("shares", help="list the files the running node shares (name, size, urn, hits)")
    sh.add_argument("--json", action="store_true", help="one JSON object per file")
    sub.add_parser("rescan", help="rescan the running node's share folders now")
    cf = sub.add_parser("config", help="print every config setting with its default, or check a file")
    cg = cf.add_mutually_exclusive_group(required=True)
    cg.add_argument("--defaults", action="store_true", help="print a commented TOML of every key and its default")
    cg.add_argument("--check", type=Path, metavar="FILE", help="check a config file; exit 2 naming what is wrong")

    w = sub.add_parser("gwc", help="run a GWebCache server (spec 1 and 2)")
    w.add_argument("--listen", type=_listen_address, required=True, metavar="HOST:PORT")
    w.add_argument("--update-interval", type=float, default=None, metavar="S",
                   help="seconds between two updates accepted from one IP (default 3300)")
    b = sub.add_parser("ban", help="refuse and never dial an address or network (saved to hostiles.txt)")
    b.add_argument("target", metavar="ADDR[/BITS]")
    dh = sub.add_parser("dht", help="the running node's DHT: status, or the raw values under a urn")
    dh.add_argument("action", choices=("status", "get"))
    dh.add_argument("urn", nargs="?", metavar="URN", help="get: urn:sha1:... (or a 40-digit hex KUID)")
    dh.add_argument("--json", action="store_true")
    dh.add_argument("--timeout", type=float, default=20.0, metavar="S")

    d = sub.add_parser("demo", help="run a local demo network with real searches and a download")
    d.add_argument("--nodes", type=int, default=20)
    d.add_argument("--loop", choices=LOOP_CHOICES, default="auto")
    d.add_argument("--seed", type=int, default=7)
    return p


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def node_config(args: argparse.Namespace) -> NodeConfig:
    """Turn `gnut node` options (over an optional config file) into a NodeConfig."""
    kw: dict = load_config_file(args.config) if args.config else {}
    if args.listen:
        kw["listen_host"], kw["listen_port"] = args.listen
    if args.connect:
        kw["connect"] = list(args.connect)
    if args.share:
        kw["share_dirs"] = list(args.share)
    if args.uhc:
        kw["uhc"] = list(args.uhc)
    if args.gwc:
        for url in args.gwc:
            if not url.startswith("http://"):
                raise ValueError(f"--gwc {url!r}: only http:// GWebCache URLs are supported")
        kw["gwc"] = list(args.gwc)
    if args.bootstrap:
        kw["bootstrap"] = True
    for opt, key in (("mode", "mode"), ("loop", "loop"), ("max_peers", "max_peers"), ("max_leaves", "max_leaves"),
                     ("out_links", "out_links"), ("firewalled", "firewalled"), ("download_dir", "download_dir"),
                     ("log_file", "log_file"), ("hostiles", "hostiles"), ("tls", "tls"),
                     ("max_upload_rate", "max_upload_rate"), ("max_download_rate", "max_download_rate")):
        if getattr(args, opt) is not None:
            kw[key] = getattr(args, opt)
    if args.no_control:
        kw["control"] = False
    if args.dht or args.dht_bootstrap:
        kw["dht"] = True
    if args.dht_bootstrap:
        kw["dht_bootstrap"] = list(args.dht_bootstrap)
    kw["home"] = args.home or kw.get("home") or default_home()
    count = args.verbose + args.node_verbose
    kw["verbose"] = FLOW_VERBOSITY + count - 1 if count else int(kw.get("verbose", 0))
    if kw.get("mode") == "leaf" and "out_links" not in kw:
        kw["out_links"] = 3
    return NodeConfig(**kw)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# NodeConfig fields that `gnut node` takes as flags: errors about them name the flag.
_FLAG_KEYS = ("max_peers", "max_leaves", "out_links", "download_dir", "log_file", "mode", "loop")


def config_command(args: argparse.Namespace) -> int:
    """`gnut config --defaults` prints every setting; `--check FILE` validates one (exit 2 when bad)."""
    if args.defaults:
        print(defaults_toml())
        return 0
    try:
        load_config_file(args.check)
    except ConfigFileError as exc:
        print(f"gnut config: {exc}", file=sys.stderr)
        return 2
    print(f"{args.check}: ok")
    return 0


def setup_logging(verbose: int, log_file: Path | None = None) -> None:
    """Log to stderr (and to log_file): INFO (connections, departures, transfers), DEBUG from FLOW_VERBOSITY on.

    Raises:
        OSError: the log file cannot be opened.
    """
    level = logging.DEBUG if verbose >= FLOW_VERBOSITY else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def argv_command(argv: list[str] | None) -> str | None:
    """The subcommand named in argv (or sys.argv), without parsing it again."""
    words = sys.argv[1:] if argv is None else argv
    return next((w for w in words if not w.startswith("-") and w in _COMMANDS), None)


_COMMANDS = ("node", "search", "get", "downloads", "pause", "resume", "cancel", "status", "stop", "shares",
             "rescan", "config", "demo", "gwc", "ban")


def main(argv: list[str] | None = None) -> int:
    """Run the `gnut` command line.

    Returns:
        The exit status: 0 success, 1 the operation failed, 2 bad usage, 130 interrupted.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        if argv_command(argv) == "get":  # stand-alone: the partial file and its sidecar stay
            print("gnut get: interrupted; the partial file is kept (run the same command to resume)",
                  file=sys.stderr)
        else:
            print("gnut: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FastPathMissing as exc:
        print(f"gnut: {exc}", file=sys.stderr)
        return EXIT_NO_FASTPATH


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `gnut search jazz --ext mp3 live`: words after an option are still search words.
        if args.command == "search" and not any(e.startswith("-") for e in extra):
            args.words += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        build_parser().print_help()
        return 2
    from gnut.runtime import loops

    if args.command == "node":
        try:
            cfg = node_config(args)
        except ConfigError as exc:
            flag = "--" + exc.key.replace("_", "-")
            print(f"gnut node: {flag if exc.key in _FLAG_KEYS else exc.key}: {exc.detail}", file=sys.stderr)
            return 2
        except (ValueError, OSError) as exc:
            print(f"gnut node: {exc}", file=sys.stderr)
            return 2
        try:
            setup_logging(cfg.verbose, cfg.log_file)
        except OSError as exc:
            print(f"gnut node: cannot open the log file {cfg.log_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        from gnut.app.runner import run_node

        try:
            return loops.run(run_node(cfg), cfg.loop)
        except OSError as exc:
            print(f"gnut node: {exc}", file=sys.stderr)  # e.g. the listen address is in use
            return 1
    if args.command == "gwc":
        setup_logging(args.verbose)
        from gnut.app.gwc import run_gwc
        from gnut.protocol.gwc import UPDATE_INTERVAL

        interval = UPDATE_INTERVAL if args.update_interval is None else args.update_interval
        try:
            return loops.run(run_gwc(*args.listen, interval))
        except OSError as exc:
            print(f"gnut gwc: {exc}", file=sys.stderr)
            return 1
    home = args.home or default_home()
    if args.verbose:
        setup_logging(args.verbose)
    from gnut.app import client

    if args.command == "search":
        return loops.run(client.search(args, home), args.loop)
    from gnut.app import commands

    if args.command == "get":
        return loops.run(commands.get(args, home), args.loop)
    if args.command == "config":
        return config_command(args)
    if args.command == "ban":
        return loops.run(client.ban(args, home))
    if args.command == "dht":
        from gnut.app.dhtcli import dht_command

        return loops.run(dht_command(args, home))
    handlers = {"status": commands.status, "downloads": commands.downloads, "pause": commands.queue_op,
                "resume": commands.queue_op, "cancel": commands.queue_op, "stop": commands.stop,
                "shares": commands.shares, "rescan": commands.rescan}
    if args.command in handlers:
        try:
            return loops.run(handlers[args.command](args, home))
        except (OSError, ValueError) as exc:
            print(f"gnut {args.command}: lost the running node's control socket: {exc}", file=sys.stderr)
            return 1
    if args.command == "demo":
        from gnut.app.demo import run_demo

        return loops.run(run_demo(args.nodes, args.seed), args.loop)
    return 2


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
