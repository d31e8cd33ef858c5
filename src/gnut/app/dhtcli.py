"""`gnut dht status|get`: the control op on the node side and the printing on the client side."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gnut.app import control
from gnut.dht import aloc, wire
from gnut.errors import RemoteProtocolError
from gnut.protocol.printable import printable
from gnut.runtime.share import urn_to_sha1


def _key(text: str) -> bytes | None:
    sha1 = urn_to_sha1(text)
    if sha1 is not None:
        return sha1
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) == wire.KUID_LEN else None


def value_dict(v: wire.DhtValue) -> dict:
    out = {
        "key": v.key.hex(),
        "type": printable(v.vtype),
        "version": f"{v.version[0]}.{v.version[1]}",
        "creator": {
            "kuid": v.creator.kuid.hex(),
            "host": v.creator.host,
            "port": v.creator.port,
            "vendor": printable(v.creator.vendor),
        },
        "length": len(v.data),
        "data_hex": v.data.hex(),
    }
    if v.vtype == wire.VT_ALOC:
        try:
            a = aloc.decode_aloc(v.data)
            out["aloc"] = {
                "guid": a.guid.hex(),
                "port": a.port,
                "length": a.length,
                "firewalled": a.firewalled,
                "tls": a.tls,
            }
        except RemoteProtocolError as exc:
            out["aloc_error"] = printable(str(exc))
    elif v.vtype == wire.VT_PROX:
        try:
            p = aloc.decode_prox(v.data)
            out["prox"] = {"guid": p.guid.hex(), "port": p.port, "proxies": [f"{h}:{n}" for h, n in p.proxies]}
        except RemoteProtocolError as exc:
            out["prox_error"] = printable(str(exc))
    return out


async def control_dht(node, req: dict) -> dict:
    """The control API's `dht` op: {"action": "status"} or {"action": "get", "urn": ..., "timeout": s}."""
    if getattr(node, "dht", None) is None:
        return {"error": "the DHT is not enabled on this node (gnut node --dht, or dht = true in the config)"}
    action = req.get("action", "status")
    if action == "status":
        return {"done": True, "dht": node.dht.status()}
    if action == "get":
        key = _key(str(req.get("urn", "")))
        if key is None:
            return {"error": "dht get needs a urn:sha1:... or a 40-digit hex key"}
        values = await node.dht.find_value(key, wire.VT_ANY, float(req.get("timeout", 20.0)))
        return {"done": True, "values": [value_dict(v) for v in values]}
    return {"error": f"unknown dht action {printable(str(action))!r}"}


async def dht_command(args: argparse.Namespace, home: Path) -> int:
    """`gnut dht status|get` against the node running in `home`."""
    path = home / "control.sock"
    if not path.exists() or not await control._alive(path):
        print(f"gnut dht: no running node (no control socket in {home})", file=sys.stderr)
        return 1
    req: dict = {"op": "dht", "action": args.action}
    if args.action == "get":
        if not args.urn or _key(args.urn) is None:
            print("gnut dht get: give a urn:sha1:... (or a 40-digit hex key)", file=sys.stderr)
            return 2
        req.update(urn=args.urn, timeout=args.timeout)
    async for line in control.request(path, req):
        if "error" in line:
            print(f"gnut dht: {line['error']}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(line.get("dht", line.get("values")), indent=1))
            return 0
        if args.action == "status":
            _print_status(line["dht"])
        else:
            values = line["values"]
            for v in values:
                extra = v.get("aloc") or {}
                print(
                    f"{v['type']:<5} {v['creator']['host']}:{v['creator']['port']:<6} {v['creator']['vendor']} "
                    f"v{v['version']} {v['length']} bytes"
                    + (f"  port {extra['port']} length {extra['length']:,}" if extra else "")
                )
            print(f"-- {len(values)} value(s)", file=sys.stderr)
        return 0
    return 1


def _print_status(st: dict) -> None:
    lk = st["lookups"]
    print(f"DHT {st['mode']} at {st['address']}  KUID {st['kuid']}")
    print(
        f"routing table: {st['contacts']} contacts in {st['bucket_count']} buckets"
        f"{'' if st['bootstrapped'] else ' (not bootstrapped yet)'}; estimated DHT size {st['size_estimate']:,}"
    )
    for b in st["buckets"]:
        print(f"  depth {b['depth']:>3}: {b['contacts']}")
    print(
        f"stored for others: {st['stored_values']} values under {st['stored_keys']} keys; "
        f"own values: {st['own_values']} ({st.get('published_files', 0)} shared files, "
        f"{st.get('publish_queue', 0)} queued)"
    )
    print(
        f"lookups: {lk['started']} started, {lk['succeeded']} succeeded, {lk['failed']} failed; "
        f"RPC timeouts {st['rpc_timeouts']}"
    )
    print("sent:     " + (", ".join(f"{k} {v}" for k, v in st["sent"].items()) or "none"))
    print("received: " + (", ".join(f"{k} {v}" for k, v in st["received"].items()) or "none"))
    print("drops:    " + (", ".join(f"{k} {v}" for k, v in st["drops"].items()) or "none"))
