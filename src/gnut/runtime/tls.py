"""TLS on Gnutella links: our self-signed identity, the contexts, and a memory-BIO TLS layer.

Strategy: Gnutella TLS (gtk-gnutella, GnutellaBun) is opportunistic encryption between servents
with self-signed certificates: nobody verifies anybody, the point is that a link's traffic
cannot be read or rewritten on the path. A link becomes TLS in one of two ways:
- the gnet-TLS-upgrade (handshake headers `Upgrade: TLS/1.0` / `Connection: Upgrade`, see
  protocol/handshake.py): the dialer is the TLS client and starts right after its final block;
- direct TLS: the peer's first bytes are a TLS ClientHello (it knew we speak TLS from a pong's
  or hit's GGEP "TLS"); we sniff it and answer as the server.
Both are run through `TlsLayer`, an `ssl.SSLObject` over two memory BIOs, rather than
`loop.start_tls`: bytes that arrived together with the block that opened the link (the start
of the ClientHello) can be handed to it as they are, the same code runs on uvloop and asyncio,
and a plain link pays nothing (Peer checks `tls is None` once per chunk). Deflate, when
negotiated, runs inside TLS (the Connection compresses, then TlsLayer encrypts).

The identity (an EC P-256 key and a self-signed certificate) is made on first run with the
`cryptography` package and kept in $GNUT_HOME with mode 0600.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger("gnut.runtime.tls")

# File names of our identity in the node's home.
CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
# Validity of the self-signed certificate (nobody verifies it; it must only not be expired).
CERT_VALID_DAYS = 3650
# Decrypted bytes taken out per SSLObject.read() call.
READ_STEP = 64 * 1024
# Plaintext a link may queue while its TLS handshake is still running (the node's first PING
# and QRP table fit many times); more means the peer stalls its handshake: the link fails.
MAX_PENDING_PLAINTEXT = 1024 * 1024
# After our close_notify and FIN on an HTTP-over-TLS connection, the socket is closed when the peer
# closes its side, or after this many seconds.
CLOSE_LINGER = 2.0
# The first byte of a TLS record carrying a handshake message (a ClientHello starts with it).
TLS_HANDSHAKE_RECORD = 0x16


class TlsError(Exception):
    """The TLS layer of a link failed (bad handshake, corrupt records, stalled handshake)."""


def looks_like_client_hello(first: bytes) -> bool:
    """True when a connection's first bytes are a TLS handshake record (direct TLS), not text."""
    return len(first) >= 3 and first[0] == TLS_HANDSHAKE_RECORD and first[1] == 3


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only (created 0600, replaced atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_identity(home: Path) -> tuple[Path, Path]:
    """Our certificate and key files in `home`, generated (mode 0600) when missing.

    Returns:
        (certificate path, key path).

    Raises:
        RuntimeError: the `cryptography` package is not installed and no identity exists.
    """
    home = Path(home)
    cert, key = home / CERT_FILE, home / KEY_FILE
    if cert.exists() and key.exists():
        return cert, key
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeError(f"cannot make a TLS identity: {exc}") from None
    home.mkdir(parents=True, exist_ok=True)
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gnut")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALID_DAYS))
        .sign(pkey, hashes.SHA256())
    )
    _write_private(key, pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    _write_private(cert, certificate.public_bytes(serialization.Encoding.PEM))
    log.info("made a TLS identity in %s", home)
    return cert, key


class TlsContexts:
    """The server and client contexts of a node (unverified peers, TLS 1.2 at least)."""

    def __init__(self, home: Path) -> None:
        cert, key = ensure_identity(home)
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.minimum_version = ssl.TLSVersion.TLSv1_2
        self.server.load_cert_chain(cert, key)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.minimum_version = ssl.TLSVersion.TLSv1_2
        # Servents' certificates are self-signed and name no host: encryption, not authentication.
        self.client.check_hostname = False
        self.client.verify_mode = ssl.CERT_NONE

    def get(self, server_side: bool) -> ssl.SSLContext:
        return self.server if server_side else self.client


class TlsLayer:
    """TLS for one link over memory BIOs: wire bytes in, plaintext out, and the reverse.

    Use `start()` once (its bytes are the ClientHello on the client side), then `receive()` for
    each received chunk and `send()` for each plaintext burst; write what they return.
    """

    __slots__ = ("_in", "_out", "_obj", "done", "_pending", "eof", "version", "cipher")

    def __init__(self, ctx: ssl.SSLContext, server_side: bool) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=server_side)
        self.done = False
        self._pending = bytearray()
        self.eof = False
        self.version = ""
        self.cipher = ""

    def pending_bytes(self) -> int:
        """Plaintext waiting for the handshake to end (counted by the link's flow control)."""
        return len(self._pending)

    def start(self) -> bytes:
        """Begin the handshake; returns the bytes to write (ClientHello, or b"" as server)."""
        self._handshake()
        return self._out.read()

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"TLS handshake failed: {exc}") from None
        self.done = True
        self.version = self._obj.version() or ""
        cipher = self._obj.cipher()
        self.cipher = cipher[0] if cipher else ""
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            self._obj.write(data)

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed received wire bytes.

        Returns:
            (plaintext for the Connection, wire bytes to write back: handshake replies).

        Raises:
            TlsError: the handshake failed or a record is corrupt.
        """
        self._in.write(data)
        if not self.done:
            self._handshake()
            if not self.done:
                return b"", self._out.read()
        chunks = []
        try:
            while True:
                chunk = self._obj.read(READ_STEP)
                if not chunk:
                    self.eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.eof = True
        except ssl.SSLError as exc:
            raise TlsError(f"TLS record error: {exc}") from None
        return b"".join(chunks), self._out.read()

    def close_notify(self) -> bytes:
        """The TLS close_notify alert to write before closing (so the peer knows the end is real)."""
        if not self.done:
            return b""
        try:
            self._obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, ValueError):
            pass
        return self._out.read()

    def send(self, data: bytes) -> bytes:
        """Encrypt plaintext; before the handshake is done it waits (bounded) in the layer.

        Returns:
            The wire bytes to write.

        Raises:
            TlsError: more than MAX_PENDING_PLAINTEXT waits for a handshake that does not end.
        """
        if not self.done:
            self._pending += data
            if len(self._pending) > MAX_PENDING_PLAINTEXT:
                raise TlsError("TLS handshake stalled with output waiting")
            return b""
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"TLS write failed: {exc}") from None
        return self._out.read()


class TlsTransport(asyncio.Transport):
    """The plaintext side of a TLS link, for a stream protocol (HTTP over TLS) that takes it over.

    The Peer stays the raw transport's protocol: it decrypts and hands the plaintext to
    `peer.http_proto`, and forwards write pauses so the stream's drain() really waits.
    """

    # The upload side must copy through write() (it must be encrypted): no sendfile.
    sendfile_ok = False

    def __init__(self, peer) -> None:
        super().__init__()
        self._peer = peer
        self._closing = False

    def set_protocol(self, protocol) -> None:
        self._peer.http_proto = protocol  # (open_tls_connection attaches through _TlsClientSocket.attach)

    def get_protocol(self):
        return self._peer.http_proto

    def get_extra_info(self, name, default=None):
        return self._peer.transport.get_extra_info(name, default)

    def write(self, data) -> None:
        raw = self._peer.transport
        if raw.is_closing():
            return
        try:
            wire = self._peer.tls.send(bytes(data))
        except TlsError:
            raw.abort()
            return
        if wire:
            raw.write(wire)

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing or self._peer.transport.is_closing()

    def close(self) -> None:
        """close_notify, then a half-close: the socket closes when the peer closes its side (or after
        CLOSE_LINGER). Closing at once could RST away the last response still in the peer's buffer
        when its own TLS records are unread on our side."""
        raw = self._peer.transport
        if self._closing or raw.is_closing():
            return
        self._closing = True
        wire = self._peer.tls.close_notify()
        if wire:
            raw.write(wire)
        if raw.can_write_eof():
            raw.write_eof()
            asyncio.get_running_loop().call_later(CLOSE_LINGER, raw.close)
        else:
            raw.close()

    def abort(self) -> None:
        self._peer.transport.abort()

    def is_reading(self) -> bool:
        return self._peer.transport.is_reading()

    def pause_reading(self) -> None:
        self._peer.transport.pause_reading()

    def resume_reading(self) -> None:
        self._peer.transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._peer.transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._peer.transport.set_write_buffer_limits(high, low)


class _TlsClientSocket(asyncio.Protocol):
    """The socket side of open_tls_connection(): decrypts into the stream protocol of TlsTransport."""

    def __init__(self, layer: TlsLayer, done: asyncio.Future) -> None:
        self.tls = layer
        self.transport: asyncio.Transport | None = None
        self.http_proto: asyncio.Protocol | None = None
        self._done = done
        self._early = bytearray()  # plaintext that came before the stream protocol was attached

    def connection_made(self, transport) -> None:
        self.transport = transport
        try:
            transport.write(self.tls.start())
        except TlsError as exc:
            self._done.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        try:
            plain, wire = self.tls.receive(data)
        except TlsError as exc:
            if not self._done.done():
                self._done.set_exception(exc)
            self.transport.abort()
            return
        if wire:
            self.transport.write(wire)
        if self.tls.done and not self._done.done():
            self._done.set_result(None)
        if plain:
            if self.http_proto is None:
                self._early += plain
            else:
                self.http_proto.data_received(plain)

    def attach(self, proto: asyncio.Protocol) -> None:
        self.http_proto = proto
        if self._early:
            data, self._early = bytes(self._early), bytearray()
            proto.data_received(data)

    def eof_received(self):
        if self.http_proto is not None:
            self.http_proto.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.http_proto is not None:
            self.http_proto.pause_writing()

    def resume_writing(self) -> None:
        if self.http_proto is not None:
            self.http_proto.resume_writing()

    def connection_lost(self, exc) -> None:
        if not self._done.done():
            self._done.set_exception(ConnectionError(f"connection lost during the TLS handshake: {exc}"))
        if self.http_proto is not None:
            self.http_proto.connection_lost(exc)


async def open_tls_connection(host: str, port: int, ctx: ssl.SSLContext):
    """A client (StreamReader, StreamWriter) over TLS run by TlsLayer (not the loop's SSL, whose
    uvloop version can lose the last record when the server closes right after it).

    Raises:
        TlsError: the TLS handshake failed.
        OSError: the connection failed.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sock = _TlsClientSocket(TlsLayer(ctx, False), done)
    await loop.create_connection(lambda: sock, host, port)
    try:
        await done
    except BaseException:
        sock.transport.abort()
        raise
    reader = asyncio.StreamReader(loop=loop)
    proto = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = TlsTransport(sock)
    proto.connection_made(transport)
    sock.attach(proto)
    return reader, asyncio.StreamWriter(transport, proto, reader, loop)
