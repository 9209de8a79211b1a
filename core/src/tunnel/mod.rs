//! The relay <-> daemon tunnel protocol (DESIGN.md §4), sans-IO.
//!
//! Owns: the wire format of tunnel frames, their incremental decoder, the session state
//! machines of both ends, and the relay's name table. Must not: open sockets or QUIC
//! connections, read clocks (time arrives as `now: Instant`, wall-clock time for persisted
//! claims as `now_unix_secs`), use global randomness (jitter comes from a caller seed), or panic
//! on anything a peer sends.
//!
//! Code map:
//! - [`frame`]: [`Frame`] and its fields, [`Frame::encode`], [`decode_frame`], [`FrameDecoder`],
//!   [`decode_stream_header`].
//! - [`daemon`]: [`DaemonSession`], the daemon's connection to one relay address: connect,
//!   register, heartbeat, drain, reconnect with exponential backoff and seeded full jitter, ACME
//!   requests.
//! - [`relay`]: [`RelaySession`], the relay's side of one daemon connection: registration,
//!   heartbeat acks and liveness, ACME records restricted to the daemon's own names, drain, and
//!   the ownership check before a forwarded stream is opened.
//! - [`names`]: [`RelayNameTable`], name -> node id with claims, lapse, online set and a serde
//!   snapshot.
//!
//! Invariants (tested by properties and by the seeded simulation in `core/tests/tunnel_sim.rs`):
//! a forwarded stream is only opened to a node that owns the name; a custom-label claim never
//! changes owner before it lapses; a daemon registers again once its relay is back.
//!
//! # Transport
//!
//! QUIC with ALPN [`ALPN`] (`gate-relay/1`). The daemon opens the first bidirectional stream:
//! that is the **control stream**, carrying a sequence of frames in both directions, starting
//! with [`Frame::Register`]. Every HTTPS connection the relay forwards is a **relay-opened
//! bidirectional stream** that starts with exactly one [`Frame::StreamHeader`] frame, followed by
//! the client's raw bytes (use [`decode_stream_header`] on its first bytes).
//!
//! # Frame layout
//!
//! All integers are big-endian.
//!
//! | bytes | field |
//! |---|---|
//! | 4 | `len`: `u32`, length of everything after this field (type byte + body); `1 <= len <= max` |
//! | 1 | frame type |
//! | `len - 1` | body, per type below; must be consumed exactly (no trailing bytes) |
//!
//! Field encodings: `u8`/`u16`/`u32`/`u64` big-endian; `str` = `u16` byte length + UTF-8
//! bytes (at most [`MAX_STRING_LEN`]); `opt<str>` = `u8` 0 (absent) or 1 followed by `str`;
//! `addr` = `u8` 4 + 4 address bytes, or `u8` 6 + 16 address bytes, then `u16` port (IPv6 flow
//! info and scope id are not carried).
//!
//! | type | frame | direction | body |
//! |---|---|---|---|
//! | `0x01` | Register | daemon -> relay | `u16` protocol version, `str` daemon software version, `opt<str>` requested custom label, then from version 4 on and only when the daemon has one: `str` registration token |
//! | `0x02` | Registered | relay -> daemon | `u16` protocol version, `str` node name (`<node-id>.<suffix>`), `opt<str>` custom name granted, `opt<str>` custom name refusal reason, `u32` heartbeat interval (ms), then from version 2 on: `u16` public HTTPS port (0 = not announced) |
//! | `0x03` | Refused | relay -> daemon | `str` reason |
//! | `0x04` | Heartbeat | daemon -> relay | `u64` seq |
//! | `0x05` | HeartbeatAck | relay -> daemon | `u64` seq |
//! | `0x06` | StreamHeader | relay -> daemon, forwarded streams only | `addr` client address, `str` server name |
//! | `0x07` | AcmeChallengeSet | daemon -> relay | `u64` request id, `str` record name, `str` TXT value |
//! | `0x08` | AcmeChallengeClear | daemon -> relay | `u64` request id, `str` record name |
//! | `0x09` | AcmeChallengeResult | relay -> daemon | `u64` request id, `u8` 0 = ok, or 1 followed by `str` error message |
//! | `0x0A` | Drain | relay -> daemon | empty |
//! | `0x0B` | Error | either | `u16` code ([`ErrorCode`]), `str` message |
//! | `0x0C` | Leaving | daemon -> relay, version 3 on | empty |
//! | `0x0D` | LeavingAck | relay -> daemon, version 3 on | empty |
//!
//! # Versioning
//!
//! [`PROTOCOL_VERSION`] is 4. The daemon sends the highest version it speaks in `Register`; the
//! relay answers `Registered` with the version both will use (at most the daemon's) or `Refused`
//! when it has none in common. Unknown frame types are a decoding error, so a new frame type
//! needs a new protocol version. The ALPN stays `gate-relay/1`: versions are negotiated inside.
//!
//! Version 2 appends the relay's public HTTPS port to `Registered`. Since the decoder reads the
//! version first and only expects the port when it is at least 2, every pairing works: a version
//! 1 daemon asks for 1 and gets a version 1 answer without the port; a version 2 daemon talking
//! to a version 1 relay gets a version 1 answer (the relay lowers to its own version) and
//! assumes port 443; two version 2 peers exchange the port. A version 1 decoder would reject the
//! port as trailing bytes, which is why the relay only sends it when both speak version 2.
//!
//! Version 3 adds the daemon's goodbye: [`Frame::Leaving`] (daemon -> relay) and
//! [`Frame::LeavingAck`] (relay -> daemon). On `Leaving` the relay takes the daemon's names out
//! of routing at once (a new HTTPS client for them gets the TLS `unrecognized_name` alert),
//! keeps the forwarded streams already open, keeps answering heartbeats, and answers
//! `LeavingAck`. The daemon closes the connection once its open streams are done. Both ends
//! only use the frames when the negotiated version is at least [`GOODBYE_SINCE_VERSION`]:
//!
//! | daemon | relay | negotiated | goodbye |
//! |---|---|---|---|
//! | 3 | 3 | 3 | `Leaving` / `LeavingAck`, names out of routing at once |
//! | 3 | 2 or 1 | 2 or 1 | not sent (the relay would reject the unknown type); the daemon just closes the connection, and the relay takes the names out when it sees the connection lost |
//! | 2 or 1 | 3 | 2 or 1 | never sent; a `Leaving` on such a session is a protocol violation |
//!
//! Version 4 adds the registration token ([`Register::token`], the daemon's `relay.token`) as a
//! trailing `str` of `Register`, present only when the daemon has a token. So a version 4
//! daemon without a token sends what a version 3 relay reads (it answers with version 3), and a
//! version 3 daemon is told by a relay in token mode that it has no token and should upgrade.
//! A version 4 daemon *with* a token talking to a version 3 relay gets that relay's protocol
//! violation ("trailing bytes" in `Register`); the daemon reports it as a refusal that says
//! the relay is older than tokens (upgrade it, or unset `relay.token`).
//!
//! | daemon | relay | token set | outcome |
//! |---|---|---|---|
//! | 4 | 4 | yes | checked by the relay's access policy |
//! | 4 | 4 | no | a relay in token mode refuses: set `relay.token` |
//! | 4 | 3 or older | no | registers, version 3 or older |
//! | 4 | 3 or older | yes | refused: the relay is older than tokens |
//! | 3 or older | 4 | - | a relay in token mode refuses: upgrade the daemon |
//!
//! # Limits
//!
//! A decoder rejects any length prefix over its maximum ([`DEFAULT_MAX_FRAME_LEN`] = 64 KiB
//! unless configured) from the 4 prefix bytes alone, before buffering or allocating for the
//! frame. Decoding never panics; every malformed input is a [`FrameError`].

pub mod access;
pub mod daemon;
pub mod frame;
pub mod names;
pub mod quota;
pub mod relay;

pub use access::{
    address_bucket, is_token_name, split_token_entry, throttle_message, AccessMode, AccessPolicy,
    Account, RegistrationThrottle, RegistrationToken, Throttle, MAX_THROTTLED_ADDRESSES,
    MIN_TOKEN_SECRET_LEN, REGISTRATION_WINDOW,
};
pub use daemon::{
    AcmeRequestError, ConnectionAttempt, DaemonConfig, DaemonEvent, DaemonSession, DaemonState,
    DisconnectReason, RegisteredNames,
};
pub use frame::{
    decode_frame, decode_stream_header, AcmeChallengeClear, AcmeChallengeResult, AcmeChallengeSet,
    EncodeError, ErrorCode, ErrorFrame, Frame, FrameDecoder, FrameError, Register, Registered,
    StreamHeader, ALPN, DEFAULT_MAX_FRAME_LEN, GOODBYE_SINCE_VERSION, HTTPS_PORT_SINCE_VERSION,
    LENGTH_PREFIX_LEN, MAX_STRING_LEN, PROTOCOL_VERSION, TOKEN_SINCE_VERSION,
};
pub use names::{
    validate_custom_label, ClaimRecord, ClaimRules, NameError, NameGrant, NameTableConfig,
    NameTableSnapshot, NodeId, RelayNameTable, SharedClaim, DEFAULT_CLAIM_LAPSE,
    DEFAULT_MAX_CLAIMS, NODE_ID_LEN,
};
pub use quota::{Quota, QuotaLedger, QuotaRefusal, Quotas, UsageView, ACME_WINDOW, BYTES_WINDOW};
pub use relay::{
    CloseReason, PendingRegistration, RelayConfig, RelayEvent, RelaySession, RelayState,
    StreamRefusal, ACME_CHALLENGE_PREFIX,
};
