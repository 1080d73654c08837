"""Torrc generation for a private Tor network: authorities, relays, clients and onion services.

Everything here is pure (no processes, no sockets) except the two small writers at the end
(``write_ob_config`` and ``write_hs_secret_key``), so the generated text can be unit-tested.
The option sets follow the measured recipe in docs/testnet.md §3:
every tor gets ``TestingTorNetwork 1``, the full list of ``DirAuthority`` lines, a loopback
control port with cookie authentication, and a notice log inside its data directory.

Values are checked before they reach a torrc: a newline or NUL inside a value would let a caller
inject arbitrary options, so those are refused with :class:`TorrcError`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from onionmesh.errors import OnionmeshError

# Voting interval of the test network: 20 s makes the hidden-service time period 8 minutes
# (24 voting intervals), the value Onionbalance's --is-testnet hard-codes.
DEFAULT_VOTING_INTERVAL = 20
DEFAULT_VOTE_DELAY = 4
REND_LOG = "rend-info.log"  # test clients: tor's info-level log of the rend domain only

_NICKNAME_RE = re.compile(r"^[A-Za-z0-9]{1,19}$")
_OPTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEX40_RE = re.compile(r"^[0-9A-F]{40}$")
_ONION_RE = re.compile(r"^[a-z2-7]{56}$")

# File headers tor uses for v3 onion-service key files (32 bytes each, NUL padded).
_HS_SECRET_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"
_HS_PUBLIC_HEADER = b"== ed25519v1-public: type0 ==\x00\x00\x00"


class TorrcError(OnionmeshError):
    """A torrc could not be generated because a value is invalid."""


@dataclass(frozen=True)
class DirAuthority:
    """One directory authority as every torrc of the network must name it."""

    nickname: str
    address: str
    or_port: int
    dir_port: int
    v3ident: str  # hex SHA1 of the authority identity key (from authority_certificate)
    fingerprint: str  # hex SHA1 of the relay identity key (from tor --list-fingerprint)

    def __post_init__(self) -> None:
        check_nickname(self.nickname)
        check_port(self.or_port, "or_port")
        check_port(self.dir_port, "dir_port")
        _check_value(self.address, "address")
        for label, value in (("v3ident", self.v3ident), ("fingerprint", self.fingerprint)):
            if not isinstance(value, str) or not _HEX40_RE.match(value):
                raise TorrcError(f"{label} of authority {self.nickname!r} is not 40 uppercase hex")

    def line(self) -> str:
        """The value of this authority's ``DirAuthority`` option."""
        return (
            f"{self.nickname} orport={self.or_port} no-v2 v3ident={self.v3ident} "
            f"{self.address}:{self.dir_port} {self.fingerprint}"
        )


@dataclass(frozen=True)
class NodeBase:
    """Settings every tor of the network shares: identity, directories, control port."""

    nickname: str
    data_dir: Path
    control_port: int
    authorities: tuple[DirAuthority, ...]

    def __post_init__(self) -> None:
        check_nickname(self.nickname)
        check_port(self.control_port, "control_port")
        if not self.authorities:
            raise TorrcError("a test network torrc needs at least one DirAuthority")


def check_nickname(name: object) -> str:
    """Return ``name`` if it is a valid tor nickname (1-19 ASCII letters/digits)."""
    if not isinstance(name, str) or not _NICKNAME_RE.match(name):
        raise TorrcError(f"invalid tor nickname {name!r}: need 1-19 ASCII letters or digits")
    return name


def check_port(port: object, label: str = "port") -> int:
    """Return ``port`` if it is an int TCP port in 1..65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise TorrcError(f"invalid {label} {port!r}: need an integer in 1..65535")
    return port


def _check_value(value: object, label: str) -> str:
    if not isinstance(value, str):
        raise TorrcError(f"torrc value for {label} must be a string, got {type(value).__name__}")
    if any(ch in value for ch in "\r\n\x00"):
        raise TorrcError(f"torrc value for {label} contains a line break or NUL")
    if value != value.strip():
        raise TorrcError(f"torrc value for {label} has leading or trailing whitespace")
    return value


def render(options: Iterable[tuple[str, str | int]]) -> str:
    """Render ``(option, value)`` pairs as torrc text, one option per line."""
    lines = []
    for key, value in options:
        if not isinstance(key, str) or not _OPTION_RE.match(key):
            raise TorrcError(f"invalid torrc option name {key!r}")
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        lines.append(f"{key} {_check_value(text, key)}")
    return "\n".join(lines) + "\n"


def _path(path: Path, label: str) -> str:
    text = _check_value(str(path), label)
    if not os.path.isabs(text):
        # tor resolves relative paths against its own working directory, which is not ours.
        raise TorrcError(f"{label} must be an absolute path, got {text!r}")
    return text


def common_options(node: NodeBase) -> list[tuple[str, str | int]]:
    """The head every torrc of the network starts with (docs/testnet.md §3)."""
    data_dir = _path(node.data_dir, "data_dir")
    options: list[tuple[str, str | int]] = [
        ("TestingTorNetwork", 1),
        ("DataDirectory", data_dir),
        ("PidFile", f"{data_dir}/tor.pid"),
        ("Nickname", node.nickname),
        ("Log", f"notice file {data_dir}/notice.log"),
        ("SafeLogging", 0),
        ("ShutdownWaitLength", 0),
        ("ControlPort", f"127.0.0.1:{node.control_port}"),
        ("CookieAuthentication", 1),
    ]
    options.extend(("DirAuthority", auth.line()) for auth in node.authorities)
    return options


def authority_torrc(
    node: NodeBase,
    *,
    or_port: int,
    dir_port: int,
    voting_interval: int = DEFAULT_VOTING_INTERVAL,
    vote_delay: int = DEFAULT_VOTE_DELAY,
) -> str:
    """Torrc of a directory authority that is also an HSDir/Guard relay."""
    check_port(or_port, "or_port")
    check_port(dir_port, "dir_port")
    check_voting(voting_interval, vote_delay)
    options = common_options(node) + _relay_options(or_port)
    options += [
        ("DirPort", f"127.0.0.1:{dir_port}"),
        ("AuthoritativeDirectory", 1),
        ("V3AuthoritativeDirectory", 1),
        ("ContactInfo", f"{node.nickname}@test.invalid"),
        # The initial interval must equal the normal one, or the HS time period length
        # changes after the first consensus (docs/testnet.md §3, §4).
        ("TestingV3AuthInitialVotingInterval", voting_interval),
        ("V3AuthVotingInterval", voting_interval),
        ("TestingV3AuthInitialVoteDelay", vote_delay),
        ("V3AuthVoteDelay", vote_delay),
        ("TestingV3AuthInitialDistDelay", vote_delay),
        ("V3AuthDistDelay", vote_delay),
        ("TestingDirAuthVoteHSDir", "*"),
        ("TestingDirAuthVoteGuard", "*"),
        ("TestingMinExitFlagThreshold", 0),
    ]
    return render(options)


def check_voting(voting_interval: int, vote_delay: int) -> None:
    """Refuse voting timings tor would reject or that break the 24-interval HS period math."""
    for label, value in (("voting_interval", voting_interval), ("vote_delay", vote_delay)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TorrcError(f"{label} must be a positive integer, got {value!r}")
    if voting_interval % 5:
        raise TorrcError(f"voting_interval {voting_interval} is not a multiple of 5 seconds")
    if 2 * vote_delay >= voting_interval:
        raise TorrcError(
            f"vote_delay {vote_delay} is too long: vote + distribution delay must be shorter "
            f"than voting_interval {voting_interval}"
        )


def relay_torrc(node: NodeBase, *, or_port: int) -> str:
    """Torrc of a plain (non-exit) relay; slower to join than an authority (docs/testnet.md §1)."""
    check_port(or_port, "or_port")
    return render(common_options(node) + _relay_options(or_port))


def _relay_options(or_port: int) -> list[tuple[str, str | int]]:
    """What every loopback relay of the test network has (authorities too)."""
    return [
        ("Address", "127.0.0.1"),
        ("ORPort", f"127.0.0.1:{or_port}"),
        ("AssumeReachable", 1),
        ("ExitPolicy", "reject *:*"),
        ("SocksPort", 0),
    ]


def client_torrc(node: NodeBase, *, socks_port: int, client_auth_dir: Path | None = None) -> str:
    """Torrc of a client whose SOCKS port reports onion-service failures precisely;
    ``client_auth_dir``: its ``ClientOnionAuthDir`` (``*.auth_private`` files, restricted
    discovery keys, read at startup)."""
    check_port(socks_port, "socks_port")
    options = common_options(node)
    # ExtendedErrors turns the generic SOCKS 0x04 into 0xF0 (no descriptor), 0xF2/0xF3 ...
    options.append(("SocksPort", f"127.0.0.1:{socks_port} ExtendedErrors"))
    if client_auth_dir is not None:
        options.append(("ClientOnionAuthDir", _path(client_auth_dir, "client_auth_dir")))
    # The client side of every introduction and rendezvous, for reading a failed GET.
    options.append(("Log", f"[rend]info file {_path(node.data_dir, 'data_dir')}/{REND_LOG}"))
    return render(options)


def onion_service_torrc(
    node: NodeBase,
    *,
    hs_dir: Path,
    target_port: int,
    virtual_port: int = 80,
    socks_port: int | None = None,
    onionbalance_instance: bool = False,
) -> str:
    """Torrc of a tor running one v3 onion service (optionally an Onionbalance instance).

    With ``onionbalance_instance`` the caller must also write ``ob_config`` into ``hs_dir``
    before tor starts (:func:`write_ob_config`); tor reads it only at startup.
    """
    check_port(target_port, "target_port")
    check_port(virtual_port, "virtual_port")
    options = common_options(node)
    if socks_port is None:
        options.append(("SocksPort", 0))
    else:
        options.append(("SocksPort", f"127.0.0.1:{check_port(socks_port, 'socks_port')}"))
    options += [
        ("HiddenServiceDir", _path(hs_dir, "hs_dir")),
        ("HiddenServicePort", f"{virtual_port} 127.0.0.1:{target_port}"),
    ]
    if onionbalance_instance:
        options.append(("HiddenServiceOnionbalanceInstance", 1))
    return render(options)


def normalize_onion_address(address: object) -> str:
    """Return the 56-character v3 address (no ``.onion``) or raise :class:`TorrcError`.

    Checks the version byte and checksum (rend-spec-v3 §6: CHECKSUM =
    SHA3-256(".onion checksum" | PUBKEY | VERSION)[:2], VERSION = 3).
    """
    if not isinstance(address, str):
        raise TorrcError(f"onion address must be a string, got {type(address).__name__}")
    text = address.strip().lower()
    if text.endswith(".onion"):
        text = text[: -len(".onion")]
    if not _ONION_RE.match(text):
        raise TorrcError(f"{address!r} is not a v3 onion address (56 base32 characters)")
    raw = base64.b32decode(text.upper())
    pubkey, checksum, version = raw[:32], raw[32:34], raw[34]
    if version != 3:
        raise TorrcError(f"onion address {text}.onion has version {version}, expected 3")
    expected = hashlib.sha3_256(b".onion checksum" + pubkey + bytes([version])).digest()[:2]
    if checksum != expected:
        raise TorrcError(f"onion address {text}.onion has a bad checksum")
    return text


def onion_address_from_public_key(public_key: bytes) -> str:
    """The v3 onion address (without ``.onion``) of an ed25519 public key."""
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise TorrcError("an onion service public key must be 32 bytes")
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + b"\x03").digest()[:2]
    return base64.b32encode(public_key + checksum + b"\x03").decode().lower()


def ob_config_text(master_address: str) -> str:
    """Content of ``ob_config`` for an Onionbalance instance of ``master_address``."""
    return f"MasterOnionAddress {normalize_onion_address(master_address)}.onion\n"


def make_hs_dir(hs_dir: Path) -> None:
    """Create a HiddenServiceDir with the 0700 mode tor insists on."""
    hs_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(hs_dir, 0o700)


def write_ob_config(hs_dir: Path, master_address: str) -> Path:
    """Write ``<hs_dir>/ob_config`` naming the master; must happen before tor starts."""
    text = ob_config_text(master_address)
    make_hs_dir(hs_dir)
    path = hs_dir / "ob_config"
    path.write_text(text)
    return path


def write_hs_secret_key(hs_dir: Path, secret: bytes) -> str:
    """Install an ed25519 identity into ``hs_dir`` so tor serves that address.

    ``secret`` is either a 32-byte seed or a 64-byte expanded secret key (clamped scalar
    followed by the nonce prefix), the form tor stores. Returns the onion address. The
    key bytes are never put into error messages.
    """
    from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp

    if not isinstance(secret, bytes) or len(secret) not in (32, 64):
        raise TorrcError("an onion service secret key must be a 32-byte seed or 64-byte key")
    if len(secret) == 32:
        digest = bytearray(hashlib.sha512(secret).digest())
        digest[0] &= 248
        digest[31] &= 127
        digest[31] |= 64
        expanded = bytes(digest)
    else:
        expanded = secret
    scalar = expanded[:32]
    if scalar[0] & 7 or not scalar[31] & 64 or scalar[31] & 128:
        raise TorrcError("the 64-byte onion service secret key is not a clamped ed25519 scalar")
    # The scalar is used as is (no re-clamping), exactly as tor uses expanded keys.
    public = crypto_scalarmult_ed25519_base_noclamp(scalar)
    make_hs_dir(hs_dir)
    secret_path = hs_dir / "hs_ed25519_secret_key"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_HS_SECRET_HEADER + expanded)
    (hs_dir / "hs_ed25519_public_key").write_bytes(_HS_PUBLIC_HEADER + public)
    return onion_address_from_public_key(public)


def dir_authority_lines(authorities: Sequence[DirAuthority]) -> list[str]:
    """The ``DirAuthority`` option lines for ``authorities`` (for diagnostics and docs)."""
    return [f"DirAuthority {auth.line()}" for auth in authorities]
