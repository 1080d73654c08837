"""Pure tests of the control-protocol parser, auth helpers and command masking.

HS_DESC fixture lines use the formats tor itself emits and checks in
src/test/test_hs_control.c (test_hs_desc_event) and control-spec §4.1.25.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from onionmesh.errors import OnionmeshError
from onionmesh.tor.control import AddOnionResult, mask_command
from onionmesh.tor.control_auth import (
    ProtocolInfo,
    choose_method,
    parse_authchallenge,
    parse_protocolinfo,
    safecookie_hashes,
    verify_server_hash,
)
from onionmesh.tor.control_protocol import (
    AuthenticationError,
    ControlArgumentError,
    ControlEvent,
    ControlProtocolError,
    ControlReplyError,
    Reply,
    ReplyAssembler,
    ReplyLine,
    escape_data,
    event_from_reply,
    maybe_unquote,
    parse_hs_desc_event,
    parse_key_value_lines,
    parse_keywords,
    parse_reply_line,
    parse_reply_lines,
    quote,
    unquote,
)

ADDR = "2fvhjskjet3n5syd6yfg5lhvwcs62bojmthr35ko5bllr3iqdb4ctdyd"
LONGNAME = "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=TestDir"
BLINDED_B64 = base64.b64encode(b"B" * 32).decode().rstrip("=")
FETCH_HEX = "43" * 32
STORE_HEX = "44" * 32


# --------------------------------------------------------------- reply lines


def test_parse_reply_line_separators() -> None:
    assert parse_reply_line("250 OK") == (250, " ", "OK")
    assert parse_reply_line("250-version=0.4.9.11") == (250, "-", "version=0.4.9.11")
    assert parse_reply_line("250+config-text=") == (250, "+", "config-text=")
    assert parse_reply_line("650 ") == (650, " ", "")


@pytest.mark.parametrize(
    "line", ["", "25", "250", "25x OK", "250*OK", "abc OK", "950 OK", "\x00\x00\x00 x", "２５０ OK"]
)
def test_parse_reply_line_rejects_malformed(line: str) -> None:
    with pytest.raises(ControlProtocolError):
        parse_reply_line(line)


def test_multiline_and_data_reply_with_dot_unescaping() -> None:
    lines = [
        "250-version=0.4.9.11",
        "250+config-text=",
        "ControlPort auto",
        "..leading dot",
        "...two dots",
        "",
        ".",
        "250 OK",
    ]
    (reply,) = parse_reply_lines(lines)
    assert reply.status == 250 and reply.is_ok
    assert reply.lines[0] == ReplyLine(250, "-", "version=0.4.9.11", None)
    assert reply.lines[1].data == "ControlPort auto\n.leading dot\n..two dots\n"
    assert reply.lines[2] == ReplyLine(250, " ", "OK", None)
    assert dict(parse_key_value_lines(reply)) == {
        "version": "0.4.9.11",
        "config-text": "ControlPort auto\n.leading dot\n..two dots\n",
    }


def test_assembler_interleaves_events_and_replies() -> None:
    asm = ReplyAssembler()
    out = []
    for line in [
        "650 SIGNAL RELOAD",
        "250-a=1",
        "250 OK",
        "650-CONF_CHANGED",
        "650-ContactInfo=x y",
        "650 OK",
        "552 Unrecognized key \"nope\"",
    ]:
        r = asm.feed(line)
        if r is not None:
            out.append(r)
    assert [r.status for r in out] == [650, 250, 650, 552]
    assert asm.idle
    ev = event_from_reply(out[2], received_at=1.0)
    assert (ev.type, ev.text, ev.data) == ("CONF_CHANGED", "", "ContactInfo=x y")
    assert ev.received_at == 1.0
    with pytest.raises(ControlReplyError) as err:
        out[3].raise_for_status("GETINFO nope")
    assert err.value.status == 552 and err.value.text == 'Unrecognized key "nope"'


def test_hs_desc_content_event_carries_descriptor() -> None:
    lines = [
        f"650+HS_DESC_CONTENT {ADDR} {BLINDED_B64} {LONGNAME}",
        "hs-descriptor 3",
        "descriptor-lifetime 180",
        "..hidden dot line",
        "signature abc",
        ".",
        "650 OK",
    ]
    (reply,) = parse_reply_lines(lines)
    ev = event_from_reply(reply)
    assert ev.type == "HS_DESC_CONTENT"
    assert ev.text == f"{ADDR} {BLINDED_B64} {LONGNAME}"
    assert ev.data == "hs-descriptor 3\ndescriptor-lifetime 180\n.hidden dot line\nsignature abc"


def test_status_change_inside_reply_is_protocol_error() -> None:
    asm = ReplyAssembler()
    asm.feed("250-a=1")
    with pytest.raises(ControlProtocolError, match="status changed"):
        asm.feed("650 SIGNAL RELOAD")


def test_truncated_input_is_protocol_error() -> None:
    with pytest.raises(ControlProtocolError, match="ends inside"):
        parse_reply_lines(["250+x=", "data"])


def test_event_from_non_event_reply() -> None:
    with pytest.raises(ControlProtocolError):
        event_from_reply(Reply(250, (ReplyLine(250, " ", "OK"),)))
    with pytest.raises(ControlProtocolError):
        event_from_reply(Reply(650, (ReplyLine(650, " ", "bad-type! x"),)))


def test_escape_data_roundtrip_through_assembler() -> None:
    text = ".starts with dot\nplain\n..two\r\nend\n"
    wire = escape_data(text)
    assert wire == "..starts with dot\r\nplain\r\n...two\r\nend\r\n.\r\n"
    lines = ["250+x=", *wire.split("\r\n")[:-1], "250 OK"]
    (reply,) = parse_reply_lines(lines)
    assert reply.lines[0].data == ".starts with dot\nplain\n..two\nend"
    assert escape_data("") == ".\r\n"
    with pytest.raises(ControlArgumentError):
        escape_data("nul\0")


# ------------------------------------------------------------ quoting/keywords


def test_quote_unquote() -> None:
    assert quote('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    assert unquote(quote('a "b" \\ c')) == ('a "b" \\ c', len(quote('a "b" \\ c')))
    escaped = '"tab\\there\\n\\101"'
    assert unquote(escaped) == ("tab\there\nA", len(escaped))
    for bad in ('"unterminated', "noquote", '"ends with backslash\\'):
        with pytest.raises(ControlProtocolError):
            unquote(bad)
    with pytest.raises(ControlArgumentError):
        quote("line\nbreak")
    assert maybe_unquote('"\\"quoted\\""') == '"quoted"'
    assert maybe_unquote("plain") == "plain"
    assert maybe_unquote('"a" trailing') == '"a" trailing'


def test_parse_keywords() -> None:
    pos, kw = parse_keywords('METHODS=COOKIE,SAFECOOKIE COOKIEFILE="/var/lib/tor/control auth"')
    assert pos == [] and kw == {
        "METHODS": "COOKIE,SAFECOOKIE",
        "COOKIEFILE": "/var/lib/tor/control auth",
    }
    pos, kw = parse_keywords("AUTHCHALLENGE SERVERHASH=ab SERVERNONCE=cd")
    assert pos == ["AUTHCHALLENGE"] and kw == {"SERVERHASH": "ab", "SERVERNONCE": "cd"}
    for bad in ('=x', 'K="x"junk', 'a"b'):
        with pytest.raises(ControlProtocolError):
            parse_keywords(bad)


def test_key_value_lines_errors() -> None:
    with pytest.raises(ControlProtocolError):
        parse_key_value_lines(_reply("novalue", "OK"))
    bare = parse_key_value_lines(
        _reply("A=1", "B"), allow_bare=True
    )
    assert bare == [("A", "1"), ("B", None)]


# ----------------------------------------------------------------- HS_DESC


def test_hs_desc_requested_v3() -> None:
    ev = parse_hs_desc_event(
        f"650 HS_DESC REQUESTED {ADDR} NO_AUTH {LONGNAME} {BLINDED_B64} HSDIR_INDEX={FETCH_HEX}"
    )
    assert ev.action == "REQUESTED" and ev.address == ADDR and ev.auth_type == "NO_AUTH"
    assert ev.hsdir == "A" * 40 and ev.hsdir_nickname == "TestDir"
    assert ev.descriptor_id == BLINDED_B64
    assert ev.hsdir_index == FETCH_HEX and ev.reason is None and ev.replica is None


def test_hs_desc_created_upload_failed_received_uploaded() -> None:
    created = parse_hs_desc_event(f"HS_DESC CREATED {ADDR} UNKNOWN UNKNOWN {BLINDED_B64} REPLICA=0")
    assert created.hsdir is None and created.replica == 0 and created.descriptor_id == BLINDED_B64
    upload = parse_hs_desc_event(
        f"HS_DESC UPLOAD {ADDR} UNKNOWN {LONGNAME} {BLINDED_B64} HSDIR_INDEX={STORE_HEX}"
    )
    assert upload.action == "UPLOAD" and upload.hsdir_index == STORE_HEX
    failed = parse_hs_desc_event(
        f"HS_DESC FAILED {ADDR} NO_AUTH {LONGNAME} {BLINDED_B64} REASON=BAD_DESC"
    )
    assert failed.reason == "BAD_DESC" and failed.descriptor_id == BLINDED_B64
    received = parse_hs_desc_event(f"HS_DESC RECEIVED {ADDR} NO_AUTH {LONGNAME} {BLINDED_B64}")
    assert received.action == "RECEIVED" and received.reason is None
    uploaded = parse_hs_desc_event(f"UPLOADED {ADDR} UNKNOWN {LONGNAME}")
    assert uploaded.action == "UPLOADED" and uploaded.descriptor_id is None
    assert uploaded.hsdir == "A" * 40
    # "~nick" LongNames and lowercase hex are normalised to 40 uppercase hex.
    ignored = parse_hs_desc_event(f"HS_DESC IGNORE {ADDR} UNKNOWN $" + "b" * 40 + "~relay1")
    assert ignored.hsdir == "B" * 40 and ignored.hsdir_nickname == "relay1"
    # Upload failure (control_event_hs_descriptor_upload_end): no DescriptorID.
    failed_up = parse_hs_desc_event(
        f"HS_DESC FAILED {ADDR} UNKNOWN {LONGNAME} REASON=UPLOAD_REJECTED"
    )
    assert failed_up.reason == "UPLOAD_REJECTED" and failed_up.descriptor_id is None


def test_hs_desc_from_control_event_and_unknown_fields() -> None:
    event = ControlEvent(
        "HS_DESC",
        f"FAILED UNKNOWN NO_AUTH UNKNOWN {BLINDED_B64} REASON=NOT_FOUND FUTURE=1",
        None,
        0.0,
    )
    parsed = parse_hs_desc_event(event)
    assert parsed.address == "UNKNOWN" and parsed.reason == "NOT_FOUND" and parsed.hsdir is None
    with pytest.raises(ControlProtocolError, match="not an HS_DESC"):
        parse_hs_desc_event(ControlEvent("CIRC", "1 BUILT", None, 0.0))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "HS_DESC REQUESTED",
        f"HS_DESC REQUESTED {ADDR} NO_AUTH",
        f"HS_DESC requested {ADDR} NO_AUTH {LONGNAME}",
        f"HS_DESC REQUESTED {ADDR}.onion NO_AUTH {LONGNAME}",
        f"HS_DESC REQUESTED {ADDR} NO_AUTH $ABC",
        f"HS_DESC REQUESTED {ADDR} NO_AUTH {LONGNAME} {BLINDED_B64} REPLICA=x",
        f"HS_DESC REQUESTED {ADDR} NO_AUTH {LONGNAME} {BLINDED_B64} HSDIR_INDEX=zz",
        f"HS_DESC REQUESTED {ADDR} NO_AUTH {LONGNAME} {BLINDED_B64} extra!",
        f"HS_DESC FAILED {ADDR} NO_AUTH {LONGNAME} REASON=bad-reason",
        f"HS_DESC REQUESTED {ADDR}  NO_AUTH {LONGNAME}",
    ],
)
def test_hs_desc_malformed(text: str) -> None:
    with pytest.raises(ControlProtocolError):
        parse_hs_desc_event(text)


def test_hs_desc_non_string() -> None:
    with pytest.raises(OnionmeshError):
        parse_hs_desc_event(b"HS_DESC x")  # type: ignore[arg-type]


# --------------------------------------------------------------------- auth


def _reply(*texts: str) -> Reply:
    lines = [ReplyLine(250, "-", t) for t in texts[:-1]] + [ReplyLine(250, " ", texts[-1])]
    return Reply(250, tuple(lines))


def test_protocolinfo_as_tor_0_4_9_sends_it() -> None:
    info = parse_protocolinfo(
        _reply(
            "PROTOCOLINFO 1",
            'AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE="/tmp/x/data/control_auth_cookie"',
            'VERSION Tor="0.4.9.11"',
            "OK",
        )
    )
    assert info == ProtocolInfo(
        frozenset({"COOKIE", "SAFECOOKIE"}), "/tmp/x/data/control_auth_cookie", "0.4.9.11"
    )
    with pytest.raises(ControlProtocolError):
        parse_protocolinfo(_reply("PROTOCOLINFO 1", "OK"))
    with pytest.raises(ControlProtocolError):
        parse_protocolinfo(_reply("PROTOCOLINFO 1", "AUTH COOKIEFILE=x", "OK"))


def test_choose_method_preference() -> None:
    def info(*m: str) -> ProtocolInfo:
        return ProtocolInfo(frozenset(m), None, None)

    assert choose_method(info("NULL", "COOKIE"), have_password=False) == "NULL"
    assert choose_method(info("COOKIE", "SAFECOOKIE"), have_password=False) == "SAFECOOKIE"
    assert choose_method(info("COOKIE"), have_password=False) == "COOKIE"
    assert choose_method(info("HASHEDPASSWORD", "SAFECOOKIE"), have_password=True) == (
        "HASHEDPASSWORD"
    )
    assert choose_method(info("COOKIE", "SAFECOOKIE"), have_password=False, forced="COOKIE") == (
        "COOKIE"
    )
    with pytest.raises(AuthenticationError, match="password"):
        choose_method(info("HASHEDPASSWORD"), have_password=False)
    with pytest.raises(AuthenticationError, match="does not offer"):
        choose_method(info("COOKIE"), have_password=False, forced="SAFECOOKIE")
    with pytest.raises(AuthenticationError, match="no supported"):
        choose_method(info("MAGIC"), have_password=False)


def test_safecookie_hashes_follow_control_spec() -> None:
    cookie, cn, sn = bytes(range(32)), b"\x01" * 32, b"\x02" * 32
    server, client = safecookie_hashes(cookie, cn, sn)
    # control-spec §3.24: HMAC-SHA256 keyed with the two fixed strings.
    msg = cookie + cn + sn
    k_server = b"Tor safe cookie authentication server-to-controller hash"
    k_client = b"Tor safe cookie authentication controller-to-server hash"
    want_server = hmac.new(k_server, msg, hashlib.sha256).digest()
    want_client = hmac.new(k_client, msg, hashlib.sha256).digest()
    assert (server, client) == (want_server, want_client)
    verify_server_hash(server, want_server)
    with pytest.raises(AuthenticationError, match="mismatch"):
        verify_server_hash(server, want_client)


def test_parse_authchallenge() -> None:
    h, n = "AB" * 32, "cd" * 32
    got = parse_authchallenge(_reply(f"AUTHCHALLENGE SERVERHASH={h} SERVERNONCE={n}"))
    assert got == (bytes.fromhex(h), bytes.fromhex(n))
    with pytest.raises(ControlProtocolError):
        parse_authchallenge(_reply(f"AUTHCHALLENGE SERVERHASH={h[:-2]} SERVERNONCE={n}"))
    with pytest.raises(ControlProtocolError):
        parse_authchallenge(_reply(f"SOMETHING SERVERHASH={h} SERVERNONCE={n}"))


# ------------------------------------------------------------------ masking


def test_mask_command_hides_secrets() -> None:
    assert mask_command("AUTHENTICATE 0123abcd") == "AUTHENTICATE <redacted>"
    assert mask_command('AUTHENTICATE "pw"') == "AUTHENTICATE <redacted>"
    assert mask_command("AUTHENTICATE") == "AUTHENTICATE"
    masked = mask_command("ADD_ONION ED25519-V3:c2VjcmV0a2V5 Flags=Detach Port=80,1.2.3.4:80")
    assert "c2VjcmV0a2V5" not in masked and masked.startswith("ADD_ONION ED25519-V3:<redacted>")
    assert "Port=80,1.2.3.4:80" in masked
    assert mask_command("ADD_ONION NEW:ED25519-V3 Port=80") == "ADD_ONION NEW:ED25519-V3 Port=80"
    assert "s3cret" not in mask_command('SETCONF HashedControlPassword="s3cret"')
    assert "x25519:" not in mask_command(f"ONION_CLIENT_AUTH_ADD {ADDR} x25519:AAAA")
    assert mask_command("GETINFO version") == "GETINFO version"


def test_add_onion_result_repr_hides_key() -> None:
    result = AddOnionResult(ADDR, "ED25519-V3:c2VjcmV0a2V5")
    assert "c2VjcmV0a2V5" not in repr(result) and "c2VjcmV0a2V5" not in str(result)
    assert ADDR in repr(result)
