#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ (deterministic).

Seeds are taken from docs/PROTOCOL.md, README.md's configuration table and
the integration tests: real commands, request heads, PROXY headers,
Last-Event-ID values, tokens and configs. Tokens are HS256 with the fuzz
targets' secret and exp far in the future (2100-01-01) or none.
Crash reproducers found while fuzzing are added by hand as
seeds/<target>/crash-*; this script leaves other files alone.
"""
import base64, hashlib, hmac, json, os, struct, sys

SECRET = b"corecast-fuzz-secret"
EXP = 4102444800  # 2100-01-01
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, header=None, secret=SECRET):
    h = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    c = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{h}.{c}".encode(), hashlib.sha256).digest()
    return f"{h}.{c}.{b64(sig)}"


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


TOK_U1 = jwt({"sub": "u1", "name": "Ann", "rooms": ["lobby", "team:*"], "publish": ["announce"], "exp": EXP})
TOK_U1_NOEXP = jwt({"sub": "u1"})
TOK_U2 = jwt({"sub": "u2", "exp": EXP})
TOK_EXPIRED = jwt({"sub": "u1", "exp": 1000})
TOK_BADSIG = jwt({"sub": "u1"}, secret=b"another-secret-123")

COMMANDS = {
    "auth": {"type": "auth", "id": 1, "token": TOK_U1},
    "join": {"type": "join", "id": "j1", "room": "lobby"},
    "join_since": {"type": "join", "room": "team:42", "since": {"epoch": "e1", "seq": 7}},
    "leave": {"type": "leave", "room": "lobby"},
    "publish": {"type": "publish", "id": "p1", "room": "lobby", "data": {"text": "hi", "n": [1, 2.5, -3e2, None, True]}},
    "publish_key": {"type": "publish", "room": "lobby", "data": "x\u00e9\n", "key": "k-1"},
    "ping": {"type": "ping", "id": 9},
    "history": {"type": "history", "room": "lobby", "before": 10, "limit": 5},
    "members": {"type": "members", "room": "lobby"},
    "typing": {"type": "typing", "room": "lobby", "typing": True},
    "presence": {"type": "presence", "status": "away"},
    "direct": {"type": "direct", "id": 3, "to": "u2", "data": {"a": {"b": [[]]}}},
}
RAW_COMMANDS = {
    "unknown_type": '{"type":"nope","id":"x"}',
    "missing_field": '{"type":"publish","room":"lobby"}',
    "bad_id": '{"type":"ping","id":[1]}',
    "not_object": '[1,2,3]',
    "broken": '{"type":"ping"',
    "escapes": '{"type":"publish","room":"a","data":"\\ud83d\\ude00\\u0000\\"\\\\"}',
    "deep": '{"type":"publish","room":"a","data":' + "[" * 60 + "]" * 60 + "}",
    "big_numbers": '{"type":"publish","room":"a","data":[18446744073709551615,-9223372036854775808,1e308,0.1,-0]}',
}


def commands():
    for name, c in COMMANDS.items():
        write("command", name, json.dumps(c, separators=(",", ":"), ensure_ascii=False))
    for name, c in RAW_COMMANDS.items():
        write("command", name, c)


def session():
    j = lambda c: json.dumps(c, separators=(",", ":"), ensure_ascii=False)
    C = COMMANDS
    seqs = {
        # n: in-band auth awaited; a: anonymous; t: token. Second byte: limits.
        "inband_auth_then_rooms": "n\x00\n" + "\n".join([
            j(C["auth"]), j(C["join"]), j(C["publish"]), j(C["history"]), j(C["members"]),
            j(C["typing"]), j(C["leave"]), j(C["ping"])]),
        "inband_auth_bad": "n\x00\n" + j({"type": "auth", "token": TOK_BADSIG}) + "\n" + j(C["ping"]),
        "unauthenticated": "n\x00\n" + j(C["join"]),
        "auth_timeout": "n\x00\n\x02\n" + j(C["ping"]),
        "anon_rooms_limit": "a\x02\n" + "\n".join(j({"type": "join", "room": f"r{i}"}) for i in range(5)) + "\n" + j({"type": "leave", "room": "r1"}),
        "anon_refused_join": "a\x00\n" + j(C["join"]) + "\n\x07\n" + j(C["publish"]),
        "anon_rejoin": "a\x00\n" + j(C["join"]) + "\n" + j(C["join_since"]) + "\n" + j(C["join"]),
        "anon_refresh_to_user": "a\x00\n" + j({"type": "auth", "token": TOK_U2}) + "\n" + j(C["join"]),
        "token_forbidden": "t\x01\n" + j({"type": "join", "room": "secret"}) + "\n" + j({"type": "publish", "room": "announce", "data": 1}),
        "token_refresh_other_user": "t\x00\n" + j({"type": "auth", "token": TOK_U2}),
        "token_expiry": "t\x00\n" + j(C["join"]) + "\n\x06 200\n\x03\n\x04\n\x06 10\n\x04",
        "token_expiry_refreshed": "t\x00\n\x06 200\n\x03\n" + j({"type": "auth", "token": TOK_U1}) + "\n\x04",
        "rate_limit_kick": "a\x02\n" + "\n".join([j(C["ping"])] * 12) + "\n\x05 1500\n" + "\n".join([j(C["ping"])] * 6) + "\n\x05 2500\n" + j(C["ping"]),
        "bad_frames": "a\x00\n" + "\n".join(["{", "[]", "\x01", '{"type":1}'] * 3),
        "binary": "a\x00\n\x01\n\x01\n" + j(C["direct"]),
        "too_large": "a\x02\n" + j(C["join"]) + "\n" + j({"type": "publish", "room": "lobby", "data": "x" * 100}),
        "direct_and_presence": "t\x00\n" + j(C["direct"]) + "\n" + j(C["presence"]) + "\n" + j({"type": "direct", "to": "", "data": 1}),
        "expired_token_inband": "n\x00\n" + j({"type": "auth", "token": TOK_EXPIRED}),
        "noexp_required": "n\x01\n" + j({"type": "auth", "token": TOK_U1_NOEXP}),
    }
    for name, s in seqs.items():
        write("session", name, s)


HEADS = {
    "ws_upgrade": "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "ws_upgrade_origin_xff": "GET /ws?token=abc.def.ghi HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.2\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n",
    "ws_bad_version": "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 8\r\n\r\n",
    "sse_last_event_id": "GET /sse?rooms=lobby,team:42 HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nLast-Event-ID: lobby:5@e1;team:42:9@e2\r\nAuthorization: Bearer " + TOK_U1 + "\r\n\r\n",
    "forwarded": "GET /health HTTP/1.1\r\nHost: [::1]:8080\r\nForwarded: for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\"\r\nOrigin: http://[::1]:8080\r\n\r\n",
    "metrics_openmetrics": "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0, text/plain;q=0.5\r\n\r\n",
    "api_post": "POST /api/rooms/lobby/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\nAuthorization: Bearer apikey-123456\r\n\r\n{\"data\":1}\r\n",
    "api_chunked": "POST /api/tokens HTTP/1.1\r\nTransfer-Encoding: chunked\r\nOrigin: null\r\n\r\n",
    "dup_content_length": "POST /api/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "options_preflight": "OPTIONS /api/rooms HTTP/1.1\r\nOrigin: https://a.b.example.org:8443\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, last-event-id\r\n\r\n",
    "demo": "GET / HTTP/1.0\r\n\r\n",
    "partial": "GET /ws HTTP/1.1\r\nHost: a",
    "proxy_v1_then_head": "PROXY TCP4 192.0.2.10 127.0.0.1 1 2\r\nGET /ws HTTP/1.1\r\n\r\n",
}


def http():
    for name, h in HEADS.items():
        write("http_head", name, h)


def proxy():
    sig = b"\r\n\r\n\0\r\nQUIT\n"
    v4 = sig + bytes([0x21, 0x11]) + struct.pack(">H", 12) + bytes([192, 0, 2, 10, 127, 0, 0, 1]) + struct.pack(">HH", 40000, 8080)
    v6 = sig + bytes([0x21, 0x21]) + struct.pack(">H", 36) + bytes(range(16)) + bytes(16) + struct.pack(">HH", 1, 2)
    local = sig + bytes([0x20, 0x00]) + struct.pack(">H", 0)
    tlv = sig + bytes([0x21, 0x11]) + struct.pack(">H", 12 + 7) + bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]) + bytes([0x04, 0, 4]) + b"abcd"
    unix = sig + bytes([0x21, 0x31]) + struct.pack(">H", 216) + bytes(216)
    seeds = {
        "v1_tcp4": b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 8080\r\nGET / HTTP/1.1\r\n\r\n",
        "v1_tcp6": b"PROXY TCP6 2001:db8::1 ::1 40000 8080\r\n",
        "v1_unknown": b"PROXY UNKNOWN\r\n",
        "v1_nonsense": b"PROXY TCP4 nonsense\r\n",
        "v1_family_mismatch": b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n",
        "v2_tcp4": v4 + b"GET / HTTP/1.1\r\n\r\n",
        "v2_tcp6": v6,
        "v2_local": local,
        "v2_tlv": tlv,
        "v2_unix": unix,
        "v2_short": sig + bytes([0x21, 0x11]) + struct.pack(">H", 4) + bytes(4),
        "xff_forwarded": b"203.0.113.7, 10.0.0.2, unknown\nfor=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"",
        "xff_ports": b"192.0.2.1:4711, [2001:db8::1]:80, fd00::5\nfor=unknown",
    }
    for name, s in seeds.items():
        write("proxy", name, s)


def sse():
    for i, s in enumerate([
        "lobby:5@e1;team:42:9@e2",
        "team:42:5@e1;b:9@e2;junk;c:x@e",
        "a:3",
        "room.with-dots_and:colons:18446744073709551615@01HZX3Y",
        ";;:@;a:@b;x:+7@e",
        "",
    ]):
        write("sse_cursor", f"cursor{i}", s)


def token():
    # Byte 0: bit 0 require_exp, bit 1 default rooms, bit 2 mode (0 raw token, 1 claims).
    raw = {"u1": TOK_U1, "u1_noexp": TOK_U1_NOEXP, "expired": TOK_EXPIRED, "badsig": TOK_BADSIG,
           "none_alg": jwt({"sub": "u1"}, header={"alg": "none"}), "junk": "a.b.c", "empty": ""}
    for name, t in raw.items():
        write("token", "raw_" + name, b"\x00" + t.encode())
        write("token", "rawreq_" + name, b"\x01" + t.encode())
    claims = {
        "full": {"sub": "u1", "name": "Ann", "exp": EXP, "rooms": ["lobby", "team:*"], "publish": ["announce"]},
        "sub_only": {"sub": "u1"},
        "anon_sub": {"sub": "anon:s_1"},
        "server_sub": {"sub": "server"},
        "long_name": {"sub": "u1", "name": "\u00e9" * 200},
        "nulls": {"sub": "u2", "name": None, "rooms": None, "publish": None},
        "aud_iat_nbf": {"sub": "u1", "aud": "x", "iat": 1, "nbf": 1, "iss": "me"},
        "wrong_types": {"sub": 5, "exp": "soon", "rooms": "lobby"},
    }
    for name, c in claims.items():
        write("token", "claims_" + name, b"\x04" + json.dumps(c, ensure_ascii=False).encode())
        write("token", "claimsreq_" + name, b"\x07" + json.dumps(c, ensure_ascii=False).encode())
    write("token", "claims_header_hs512", b"\x04" + json.dumps({"sub": "u1"}).encode() + b"\n" + b'{"alg":"HS512"}')
    write("token", "claims_header_kid", b"\x04" + json.dumps({"sub": "u1"}).encode() + b"\n" + b'{"alg":"HS256","kid":"k1","cty":"x"}')


CONFIGS = {
    "empty": "",
    "readme_all": """listen = "0.0.0.0:8080"
cores = 2
pin = false
echo = true
heartbeat = 25
shutdown_timeout = 10

[auth]
secret = "change-me-please"
anonymous = false
timeout = 10
expiry_grace = 30
default_rooms = ["lobby", "team:*"]
require_exp = true
allowed_origins = ["https://app.example.com", "https://*.example.com"]
api_keys = ["api-key-0001"]

[limits]
max_connections = 1000000
max_connections_per_ip = 1000
handshakes_per_ip_per_sec = 100
handshakes_per_ip_burst = 200
per_ip_exempt = "127.0.0.0/8, ::1"
max_message = 65536
max_rooms = 100
rate_per_sec = 20.0
rate_burst = 40
rate_kick_after = 10
max_backlog = 1048576
read_buffer = 128
echo_max_message = 16777216

[history]
size = 1000
ttl = 86400
durability = "async"
memory_rooms = ["cursor:*"]
async_rooms = ["lobby"]
path = "./data"

[presence]
grace = 5

[api]
rate_per_sec = 1000
rate_burst = 2000
max_body = 66560
dev_tokens = true

[proxy]
trusted = ["10.0.0.0/8", "192.0.2.7"]
""",
    "cluster": """[cluster]
redis = ["redis://user:pw@127.0.0.1:6379/0"]
node = "node-1"
prefix = "cc"
mode = "standalone"
""",
    "cluster_tls": """[cluster]
redis = "rediss://redis.example.com:6380#insecure"
tls_ca = "/etc/ca.pem"
tls_cert = "/etc/c.pem"
tls_key = "/etc/k.pem"
""",
    "bad_key": "[limits]\nmax_rooms = 0\nunknown = 1\n",
    "bad_origin": '[auth]\nallowed_origins = ["app.example.com"]\n',
    "env_layers": "cores = 1\n\0CORECAST_LISTEN=127.0.0.1:0\nCORECAST_AUTH__SECRET=0123456789\nCORECAST_LIMITS__MAX_ROOMS=7\nCORECAST_AUTH__DEFAULT_ROOMS=a,b*\nCORECAST_LOG=debug\n",
    "env_bad": "\0CORECAST_A__B__C=1\nCORECAST_LISTEN__X=1\n",
    "inline_tables": 'auth = { secret = "abcdefghij", anonymous = true }\nlimits.max_message = 16\nlimits.max_backlog = 4096\n',
    "floats": "[limits]\nrate_per_sec = 1e-300\nrate_burst = 1.5\nhandshakes_per_ip_per_sec = inf\n",
}


def config():
    for name, c in CONFIGS.items():
        write("config", name, c)


if __name__ == "__main__":
    commands(); session(); http(); proxy(); sse(); token(); config()
    for t in sorted(os.listdir(ROOT)):
        files = os.listdir(os.path.join(ROOT, t))
        size = sum(os.path.getsize(os.path.join(ROOT, t, f)) for f in files)
        print(f"{t}: {len(files)} files, {size} bytes", file=sys.stderr)
