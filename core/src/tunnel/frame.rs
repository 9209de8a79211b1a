//! Tunnel frames: the typed messages of the relay <-> daemon protocol and their exact byte
//! layout, plus the one-shot and incremental decoders.
//!
//! Owns: [`Frame`] and its field types, [`Frame::encode`], [`decode_frame`], [`FrameDecoder`]
//! and [`decode_stream_header`]. Must not: do I/O, allocate for a frame before its declared
//! length has been checked against the maximum, or panic on any input.
//!
//! The layout is documented as a table in the parent module ([`crate::tunnel`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::Secret;

/// Wire protocol version spoken by this build. Sent by the daemon in [`Register`] and echoed
/// (or lowered) by the relay in [`Registered`]. Version 2 added [`Registered::https_port`],
/// version 3 the daemon's goodbye ([`Frame::Leaving`] and [`Frame::LeavingAck`]), version 4 the
/// registration token ([`Register::token`]).
pub const PROTOCOL_VERSION: u16 = 4;

/// The first protocol version whose [`Register`] frame may carry a registration token.
pub const TOKEN_SINCE_VERSION: u16 = 4;

/// The first protocol version whose [`Registered`] frame carries the relay's public HTTPS port.
pub const HTTPS_PORT_SINCE_VERSION: u16 = 2;

/// The first protocol version with [`Frame::Leaving`] and [`Frame::LeavingAck`]: a daemon only
/// says goodbye to a relay whose negotiated version is at least this (an older relay would
/// reject the unknown frame type), and a relay treats the frame on an older session as a
/// protocol violation.
pub const GOODBYE_SINCE_VERSION: u16 = 3;

/// ALPN protocol identifier of the tunnel's QUIC connections.
pub const ALPN: &[u8] = b"gate-relay/1";

/// Default maximum frame length (64 KiB): the largest value of the length prefix, that is the
/// frame type byte plus the body, that a decoder accepts unless told otherwise.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 64 * 1024;

/// Size of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Largest string a frame can carry (its length is a `u16`).
pub const MAX_STRING_LEN: usize = u16::MAX as usize;

/// Frame type bytes, in the order of the layout table.
mod frame_type {
    pub const REGISTER: u8 = 0x01;
    pub const REGISTERED: u8 = 0x02;
    pub const REFUSED: u8 = 0x03;
    pub const HEARTBEAT: u8 = 0x04;
    pub const HEARTBEAT_ACK: u8 = 0x05;
    pub const STREAM_HEADER: u8 = 0x06;
    pub const ACME_CHALLENGE_SET: u8 = 0x07;
    pub const ACME_CHALLENGE_CLEAR: u8 = 0x08;
    pub const ACME_CHALLENGE_RESULT: u8 = 0x09;
    pub const DRAIN: u8 = 0x0A;
    pub const ERROR: u8 = 0x0B;
    pub const LEAVING: u8 = 0x0C;
    pub const LEAVING_ACK: u8 = 0x0D;
}

/// Daemon -> relay, first frame on the control stream: who I am and what I ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// Highest protocol version the daemon speaks.
    pub protocol_version: u16,
    /// The daemon's software version, for logs and diagnostics (e.g. `"0.1.0"`).
    pub daemon_version: String,
    /// The custom DNS label the daemon would like (`<label>.<suffix>`), if any.
    pub custom_label: Option<String>,
    /// The registration token (`relay.token`), if the daemon has one. On the wire from
    /// protocol version [`TOKEN_SINCE_VERSION`] on, as a trailing `str` that is present only
    /// when set, so a token-less Register of version 4 is byte for byte what an older relay
    /// reads. `Debug` never shows it.
    pub token: Option<Secret>,
}

/// Relay -> daemon: registration accepted, with the names granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Protocol version both sides will speak (at most the daemon's).
    pub protocol_version: u16,
    /// The always-granted name `<node-id>.<suffix>`.
    pub node_name: String,
    /// `<custom-label>.<suffix>` when the custom label was granted.
    pub custom_name: Option<String>,
    /// Why the requested custom label was refused, when it was.
    pub custom_name_refusal: Option<String>,
    /// How often the daemon must send [`Frame::Heartbeat`], in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// The TCP port HTTPS clients reach the relay on, so the daemon can tell its public URLs
    /// (`https://<name>:<port>/` unless it is 443). On the wire from protocol version
    /// [`HTTPS_PORT_SINCE_VERSION`] on, as a `u16` where 0 means "not announced" (`None`);
    /// a version 1 frame never has it, so an older relay's answer decodes as `None`.
    pub https_port: Option<u16>,
}

impl Registered {
    /// The heartbeat interval as a [`Duration`].
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.heartbeat_interval_ms))
    }
}

/// Relay -> daemon, first frame of every forwarded connection's stream. The raw client bytes
/// (starting with the ClientHello) follow it on the same stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// The TCP peer address of the HTTPS client as the relay saw it. IPv6 flow info and scope id
    /// are not carried (they are always zero after decoding).
    pub client_addr: SocketAddr,
    /// The server name (SNI) the client asked for.
    pub server_name: String,
}

/// Daemon -> relay: please publish `TXT <name> = <txt_value>` for an ACME DNS-01 challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeChallengeSet {
    /// Chosen by the daemon, echoed in [`AcmeChallengeResult`].
    pub request_id: u64,
    /// The record name, e.g. `_acme-challenge.<node-id>.<suffix>`.
    pub name: String,
    /// The TXT record's value (the key authorization digest).
    pub txt_value: String,
}

/// Daemon -> relay: the challenge is over, remove the TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeChallengeClear {
    /// Chosen by the daemon, echoed in [`AcmeChallengeResult`].
    pub request_id: u64,
    /// The record name given in the matching [`AcmeChallengeSet`].
    pub name: String,
}

/// Relay -> daemon: outcome of an [`AcmeChallengeSet`] or [`AcmeChallengeClear`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeChallengeResult {
    /// The request this answers.
    pub request_id: u64,
    /// `Ok(())` when done, `Err(message)` with a human-readable reason otherwise.
    pub outcome: Result<(), String>,
}

/// A protocol-level error code carried by [`Frame::Error`]. Unknown codes are kept as they are so
/// that newer peers can add codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The peer broke the protocol (unexpected frame, bad frame).
    pub const PROTOCOL_VIOLATION: ErrorCode = ErrorCode(1);
    /// No common protocol version.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(2);
    /// A request arrived before registration completed.
    pub const NOT_REGISTERED: ErrorCode = ErrorCode(3);
    /// The sender failed internally; the message says how.
    pub const INTERNAL: ErrorCode = ErrorCode(4);
    /// The peer missed too many heartbeats.
    pub const HEARTBEAT_TIMEOUT: ErrorCode = ErrorCode(5);
}

/// Either side: something went wrong; the message is meant for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// Every message of the tunnel protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Daemon -> relay: registration request (first control frame).
    Register(Register),
    /// Relay -> daemon: registration accepted.
    Registered(Registered),
    /// Relay -> daemon: registration refused entirely; the relay closes the connection.
    Refused {
        /// Why, for a person.
        reason: String,
    },
    /// Daemon -> relay: liveness probe.
    Heartbeat {
        /// Increasing sequence number, echoed in the ack.
        seq: u64,
    },
    /// Relay -> daemon: answer to [`Frame::Heartbeat`].
    HeartbeatAck {
        /// The sequence number of the heartbeat being acknowledged.
        seq: u64,
    },
    /// Relay -> daemon: first frame of a forwarded stream.
    StreamHeader(StreamHeader),
    /// Daemon -> relay: publish an ACME TXT record.
    AcmeChallengeSet(AcmeChallengeSet),
    /// Daemon -> relay: remove an ACME TXT record.
    AcmeChallengeClear(AcmeChallengeClear),
    /// Relay -> daemon: outcome of an ACME request.
    AcmeChallengeResult(AcmeChallengeResult),
    /// Relay -> daemon: the relay is going away; open no new work through it.
    Drain,
    /// Either side: a protocol or processing error.
    Error(ErrorFrame),
    /// Daemon -> relay (protocol version 3 on): the daemon is going away. The relay routes no
    /// new connection to it from now on; forwarded streams already open run until they end.
    Leaving,
    /// Relay -> daemon (protocol version 3 on): answer to [`Frame::Leaving`]; the daemon's names
    /// are out of routing.
    LeavingAck,
}

/// Why a frame could not be encoded. Nothing is written to the output in that case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string field is longer than [`MAX_STRING_LEN`] bytes.
    #[error(
        "field `{field}` is {len} bytes long; a tunnel frame string holds at most {MAX_STRING_LEN}"
    )]
    StringTooLong {
        /// The field's name.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A field is set that the frame's protocol version cannot carry (it would be lost).
    #[error(
        "field `{field}` needs protocol version {since} or later; the frame has version {version}"
    )]
    FieldNeedsVersion {
        /// The field's name.
        field: &'static str,
        /// The first version that carries it.
        since: u16,
        /// The frame's version.
        version: u16,
    },
}

/// Why bytes could not be decoded into a frame. Every variant is terminal for the stream: the
/// decoder cannot find the next frame boundary after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the decoder's maximum. Detected from the 4 prefix bytes alone,
    /// before anything is allocated for the frame.
    #[error("frame declares {declared} bytes, over the maximum of {max}")]
    FrameTooLarge {
        /// The declared length.
        declared: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The length prefix is zero, so there is not even a frame type byte.
    #[error("frame declares a length of zero (no frame type)")]
    EmptyFrame,
    /// The frame type byte is not one this version knows.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// A field runs past the end of the frame.
    #[error("frame type 0x{frame_type:02x} is truncated in field `{field}`")]
    Truncated {
        /// The frame type byte.
        frame_type: u8,
        /// The field that did not fit.
        field: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// The field's name.
        field: &'static str,
    },
    /// A tag byte (option presence, address family, outcome) has a value outside its set.
    #[error("field `{field}` has invalid tag {value}")]
    InvalidTag {
        /// The field's name.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// The frame's fields ended before its declared length.
    #[error("frame type 0x{frame_type:02x} has {count} unexpected trailing bytes")]
    TrailingBytes {
        /// The frame type byte.
        frame_type: u8,
        /// How many bytes were left over.
        count: usize,
    },
    /// A forwarded stream did not start with a stream header frame.
    #[error("forwarded stream starts with frame type 0x{0:02x}, expected a stream header")]
    NotAStreamHeader(u8),
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

fn check_str(field: &'static str, value: &str) -> Result<(), EncodeError> {
    if value.len() > MAX_STRING_LEN {
        return Err(EncodeError::StringTooLong {
            field,
            len: value.len(),
        });
    }
    Ok(())
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Writes a string whose length was already checked by [`Frame::check_strings`].
fn put_str(out: &mut Vec<u8>, value: &str) {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    put_u16(out, len);
    out.extend_from_slice(value.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put_str(out, value);
        }
    }
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    put_u16(out, addr.port());
}

impl Frame {
    /// The frame type byte of this frame.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Register(_) => frame_type::REGISTER,
            Frame::Registered(_) => frame_type::REGISTERED,
            Frame::Refused { .. } => frame_type::REFUSED,
            Frame::Heartbeat { .. } => frame_type::HEARTBEAT,
            Frame::HeartbeatAck { .. } => frame_type::HEARTBEAT_ACK,
            Frame::StreamHeader(_) => frame_type::STREAM_HEADER,
            Frame::AcmeChallengeSet(_) => frame_type::ACME_CHALLENGE_SET,
            Frame::AcmeChallengeClear(_) => frame_type::ACME_CHALLENGE_CLEAR,
            Frame::AcmeChallengeResult(_) => frame_type::ACME_CHALLENGE_RESULT,
            Frame::Drain => frame_type::DRAIN,
            Frame::Error(_) => frame_type::ERROR,
            Frame::Leaving => frame_type::LEAVING,
            Frame::LeavingAck => frame_type::LEAVING_ACK,
        }
    }

    fn check_strings(&self) -> Result<(), EncodeError> {
        match self {
            Frame::Register(r) => {
                check_str("daemon_version", &r.daemon_version)?;
                if let Some(label) = &r.custom_label {
                    check_str("custom_label", label)?;
                }
                if let Some(token) = &r.token {
                    if r.protocol_version < TOKEN_SINCE_VERSION {
                        return Err(EncodeError::FieldNeedsVersion {
                            field: "token",
                            since: TOKEN_SINCE_VERSION,
                            version: r.protocol_version,
                        });
                    }
                    check_str("token", token.expose())?;
                }
            }
            Frame::Registered(r) => {
                if r.https_port.is_some() && r.protocol_version < HTTPS_PORT_SINCE_VERSION {
                    return Err(EncodeError::FieldNeedsVersion {
                        field: "https_port",
                        since: HTTPS_PORT_SINCE_VERSION,
                        version: r.protocol_version,
                    });
                }
                check_str("node_name", &r.node_name)?;
                if let Some(name) = &r.custom_name {
                    check_str("custom_name", name)?;
                }
                if let Some(reason) = &r.custom_name_refusal {
                    check_str("custom_name_refusal", reason)?;
                }
            }
            Frame::Refused { reason } => check_str("reason", reason)?,
            Frame::Heartbeat { .. }
            | Frame::HeartbeatAck { .. }
            | Frame::Drain
            | Frame::Leaving
            | Frame::LeavingAck => {}
            Frame::StreamHeader(h) => check_str("server_name", &h.server_name)?,
            Frame::AcmeChallengeSet(s) => {
                check_str("name", &s.name)?;
                check_str("txt_value", &s.txt_value)?;
            }
            Frame::AcmeChallengeClear(c) => check_str("name", &c.name)?,
            Frame::AcmeChallengeResult(r) => {
                if let Err(message) = &r.outcome {
                    check_str("message", message)?;
                }
            }
            Frame::Error(e) => check_str("message", &e.message)?,
        }
        Ok(())
    }

    /// Appends the encoded frame (length prefix included) to `out` and returns how many bytes
    /// were written. On error nothing is written.
    ///
    /// The largest frame this can produce is a few hundred KiB (three maximal strings), so a
    /// peer's decoder may still reject what this accepts; [`Frame::encoded_len`] tells the size
    /// up front.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        self.check_strings()?;
        let start = out.len();
        out.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
        out.push(self.frame_type());
        match self {
            Frame::Register(r) => {
                put_u16(out, r.protocol_version);
                put_str(out, &r.daemon_version);
                put_opt_str(out, r.custom_label.as_deref());
                if let Some(token) = &r.token {
                    put_str(out, token.expose());
                }
            }
            Frame::Registered(r) => {
                put_u16(out, r.protocol_version);
                put_str(out, &r.node_name);
                put_opt_str(out, r.custom_name.as_deref());
                put_opt_str(out, r.custom_name_refusal.as_deref());
                put_u32(out, r.heartbeat_interval_ms);
                if r.protocol_version >= HTTPS_PORT_SINCE_VERSION {
                    put_u16(out, r.https_port.unwrap_or(0));
                }
            }
            Frame::Refused { reason } => put_str(out, reason),
            Frame::Heartbeat { seq } | Frame::HeartbeatAck { seq } => put_u64(out, *seq),
            Frame::StreamHeader(h) => {
                put_addr(out, &h.client_addr);
                put_str(out, &h.server_name);
            }
            Frame::AcmeChallengeSet(s) => {
                put_u64(out, s.request_id);
                put_str(out, &s.name);
                put_str(out, &s.txt_value);
            }
            Frame::AcmeChallengeClear(c) => {
                put_u64(out, c.request_id);
                put_str(out, &c.name);
            }
            Frame::AcmeChallengeResult(r) => {
                put_u64(out, r.request_id);
                match &r.outcome {
                    Ok(()) => out.push(0),
                    Err(message) => {
                        out.push(1);
                        put_str(out, message);
                    }
                }
            }
            Frame::Drain | Frame::Leaving | Frame::LeavingAck => {}
            Frame::Error(e) => {
                put_u16(out, e.code.0);
                put_str(out, &e.message);
            }
        }
        let written = out.len().saturating_sub(start);
        // Strings are at most 64 KiB and a frame has at most three, so this always fits a u32.
        let declared = u32::try_from(written.saturating_sub(LENGTH_PREFIX_LEN)).unwrap_or(u32::MAX);
        if let Some(prefix) = out.get_mut(start..start + LENGTH_PREFIX_LEN) {
            prefix.copy_from_slice(&declared.to_be_bytes());
        }
        Ok(written)
    }

    /// Encodes into a fresh vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// The number of bytes [`Frame::encode`] writes, length prefix included.
    pub fn encoded_len(&self) -> usize {
        let str_len = |s: &str| 2 + s.len();
        let opt_len = |s: Option<&String>| 1 + s.map_or(0, |s| str_len(s));
        let body = match self {
            Frame::Register(r) => {
                2 + str_len(&r.daemon_version)
                    + opt_len(r.custom_label.as_ref())
                    + r.token.as_ref().map_or(0, |t| str_len(t.expose()))
            }
            Frame::Registered(r) => {
                2 + str_len(&r.node_name)
                    + opt_len(r.custom_name.as_ref())
                    + opt_len(r.custom_name_refusal.as_ref())
                    + 4
                    + if r.protocol_version >= HTTPS_PORT_SINCE_VERSION {
                        2
                    } else {
                        0
                    }
            }
            Frame::Refused { reason } => str_len(reason),
            Frame::Heartbeat { .. } | Frame::HeartbeatAck { .. } => 8,
            Frame::StreamHeader(h) => {
                let ip = if h.client_addr.is_ipv4() { 4 } else { 16 };
                1 + ip + 2 + str_len(&h.server_name)
            }
            Frame::AcmeChallengeSet(s) => 8 + str_len(&s.name) + str_len(&s.txt_value),
            Frame::AcmeChallengeClear(c) => 8 + str_len(&c.name),
            Frame::AcmeChallengeResult(r) => {
                8 + 1 + r.outcome.as_ref().err().map_or(0, |m| str_len(m))
            }
            Frame::Drain | Frame::Leaving | Frame::LeavingAck => 0,
            Frame::Error(e) => 2 + str_len(&e.message),
        };
        LENGTH_PREFIX_LEN + 1 + body
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Reads fields from the body of one frame; every read is bounds-checked.
struct BodyReader<'a> {
    frame_type: u8,
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    fn take(&mut self, field: &'static str, count: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < count {
            return Err(FrameError::Truncated {
                frame_type: self.frame_type,
                field,
            });
        }
        let (head, tail) = self.rest.split_at(count);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(field, N)?);
        Ok(array)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &'static str) -> Result<String, FrameError> {
        let len = usize::from(self.u16(field)?);
        let bytes = self.take(field, len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| FrameError::InvalidUtf8 { field })?;
        Ok(text.to_owned())
    }

    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, FrameError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.string(field)?)),
            value => Err(FrameError::InvalidTag { field, value }),
        }
    }

    fn addr(&mut self, field: &'static str) -> Result<SocketAddr, FrameError> {
        let ip = match self.u8(field)? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?)),
            value => return Err(FrameError::InvalidTag { field, value }),
        };
        let port = self.u16(field)?;
        Ok(SocketAddr::new(ip, port))
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                frame_type: self.frame_type,
                count: self.rest.len(),
            })
        }
    }
}

/// Decodes the type byte and body of one frame (everything after the length prefix).
fn decode_body(frame_type: u8, body: &[u8]) -> Result<Frame, FrameError> {
    let mut r = BodyReader {
        frame_type,
        rest: body,
    };
    let frame = match frame_type {
        frame_type::REGISTER => {
            let protocol_version = r.u16("protocol_version")?;
            let daemon_version = r.string("daemon_version")?;
            let custom_label = r.opt_string("custom_label")?;
            // Present only when set, and only from version 4 on (an older frame with more
            // bytes is rejected as trailing bytes below).
            let token = if protocol_version >= TOKEN_SINCE_VERSION && !r.rest.is_empty() {
                Some(Secret::new(r.string("token")?))
            } else {
                None
            };
            Frame::Register(Register {
                protocol_version,
                daemon_version,
                custom_label,
                token,
            })
        }
        frame_type::REGISTERED => {
            let protocol_version = r.u16("protocol_version")?;
            let node_name = r.string("node_name")?;
            let custom_name = r.opt_string("custom_name")?;
            let custom_name_refusal = r.opt_string("custom_name_refusal")?;
            let heartbeat_interval_ms = r.u32("heartbeat_interval_ms")?;
            let https_port = if protocol_version >= HTTPS_PORT_SINCE_VERSION {
                Some(r.u16("https_port")?).filter(|port| *port != 0)
            } else {
                None
            };
            Frame::Registered(Registered {
                protocol_version,
                node_name,
                custom_name,
                custom_name_refusal,
                heartbeat_interval_ms,
                https_port,
            })
        }
        frame_type::REFUSED => Frame::Refused {
            reason: r.string("reason")?,
        },
        frame_type::HEARTBEAT => Frame::Heartbeat { seq: r.u64("seq")? },
        frame_type::HEARTBEAT_ACK => Frame::HeartbeatAck { seq: r.u64("seq")? },
        frame_type::STREAM_HEADER => Frame::StreamHeader(StreamHeader {
            client_addr: r.addr("client_addr")?,
            server_name: r.string("server_name")?,
        }),
        frame_type::ACME_CHALLENGE_SET => Frame::AcmeChallengeSet(AcmeChallengeSet {
            request_id: r.u64("request_id")?,
            name: r.string("name")?,
            txt_value: r.string("txt_value")?,
        }),
        frame_type::ACME_CHALLENGE_CLEAR => Frame::AcmeChallengeClear(AcmeChallengeClear {
            request_id: r.u64("request_id")?,
            name: r.string("name")?,
        }),
        frame_type::ACME_CHALLENGE_RESULT => {
            let request_id = r.u64("request_id")?;
            let outcome = match r.u8("outcome")? {
                0 => Ok(()),
                1 => Err(r.string("message")?),
                value => {
                    return Err(FrameError::InvalidTag {
                        field: "outcome",
                        value,
                    })
                }
            };
            Frame::AcmeChallengeResult(AcmeChallengeResult {
                request_id,
                outcome,
            })
        }
        frame_type::DRAIN => Frame::Drain,
        frame_type::LEAVING => Frame::Leaving,
        frame_type::LEAVING_ACK => Frame::LeavingAck,
        frame_type::ERROR => Frame::Error(ErrorFrame {
            code: ErrorCode(r.u16("code")?),
            message: r.string("message")?,
        }),
        unknown => return Err(FrameError::UnknownFrameType(unknown)),
    };
    r.finish()?;
    Ok(frame)
}

/// Reads and checks the length prefix at the start of `input`. `Ok(None)`: fewer than 4 bytes.
/// The check against `max_frame_len` happens here, on the prefix alone.
fn declared_len(input: &[u8], max_frame_len: u32) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = input.get(..LENGTH_PREFIX_LEN) else {
        return Ok(None);
    };
    let mut bytes = [0u8; LENGTH_PREFIX_LEN];
    bytes.copy_from_slice(prefix);
    let declared = u32::from_be_bytes(bytes);
    if declared > max_frame_len {
        return Err(FrameError::FrameTooLarge {
            declared,
            max: max_frame_len,
        });
    }
    if declared == 0 {
        return Err(FrameError::EmptyFrame);
    }
    Ok(Some(declared as usize))
}

/// Decodes one frame from the start of `input`, which the caller owns.
///
/// Returns `Ok(None)` when `input` holds only part of a frame (read more and call again with the
/// longer prefix), `Ok(Some((frame, consumed)))` when a whole frame was decoded from the first
/// `consumed` bytes. A length prefix over `max_frame_len` is rejected as soon as its 4 bytes are
/// present, before anything else. Never allocates more than the decoded frame's own strings.
pub fn decode_frame(
    input: &[u8],
    max_frame_len: u32,
) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(len) = declared_len(input, max_frame_len)? else {
        return Ok(None);
    };
    let total = LENGTH_PREFIX_LEN.saturating_add(len);
    let Some(frame_bytes) = input.get(LENGTH_PREFIX_LEN..total) else {
        return Ok(None);
    };
    let Some((&frame_type, body)) = frame_bytes.split_first() else {
        return Err(FrameError::EmptyFrame);
    };
    let frame = decode_body(frame_type, body)?;
    Ok(Some((frame, total)))
}

/// Decodes the [`StreamHeader`] frame that opens a forwarded stream from the stream's first
/// bytes. Returns `Ok(None)` when more bytes are needed, `Ok(Some((header, consumed)))` once the
/// header is complete: `prefix[consumed..]` is already payload (the client's TLS bytes).
/// Any other first frame is [`FrameError::NotAStreamHeader`]; the frame type is checked as soon
/// as it arrives, before the rest of the frame.
pub fn decode_stream_header(
    prefix: &[u8],
    max_frame_len: u32,
) -> Result<Option<(StreamHeader, usize)>, FrameError> {
    if declared_len(prefix, max_frame_len)?.is_none() {
        return Ok(None);
    }
    match prefix.get(LENGTH_PREFIX_LEN) {
        None => return Ok(None),
        Some(&frame_type::STREAM_HEADER) => {}
        Some(&other) => return Err(FrameError::NotAStreamHeader(other)),
    }
    match decode_frame(prefix, max_frame_len)? {
        None => Ok(None),
        Some((Frame::StreamHeader(header), consumed)) => Ok(Some((header, consumed))),
        Some((other, _)) => Err(FrameError::NotAStreamHeader(other.frame_type())),
    }
}

/// Incremental decoder for a stream of frames (the control stream).
///
/// Push bytes as they arrive with [`FrameDecoder::push`], then call [`FrameDecoder::decode`]
/// until it returns `Ok(None)`. Memory: the decoder holds only the bytes pushed and not yet
/// decoded. It never reserves space for a declared length, and rejects a length prefix over
/// `max_frame_len` as soon as the prefix is complete; so a caller that drains `decode` after each
/// push holds at most `max_frame_len + 4 - 1` bytes of an incomplete frame plus the chunk it
/// pushes next (the default maximum is [`DEFAULT_MAX_FRAME_LEN`], 64 KiB).
///
/// Errors are terminal: after one, `decode` returns the same error again and `push` discards
/// its input, since the next frame boundary cannot be found.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_len: u32,
    buffer: Vec<u8>,
    /// Start of the undecoded bytes in `buffer`.
    read_offset: usize,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder accepting frames whose length prefix is at most `max_frame_len`.
    pub fn new(max_frame_len: u32) -> Self {
        Self {
            max_frame_len,
            buffer: Vec::new(),
            read_offset: 0,
            failed: None,
        }
    }

    /// The maximum length prefix this decoder accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Appends received bytes. Discarded once the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Drop what was already decoded, so the buffer holds only undecoded bytes.
        if self.read_offset > 0 {
            self.buffer.drain(..self.read_offset.min(self.buffer.len()));
            self.read_offset = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Decodes the next complete frame, `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let pending = self.buffer.get(self.read_offset..).unwrap_or_default();
        match decode_frame(pending, self.max_frame_len) {
            Ok(Some((frame, consumed))) => {
                self.read_offset = self.read_offset.saturating_add(consumed);
                if self.read_offset >= self.buffer.len() {
                    self.buffer.clear();
                    self.read_offset = 0;
                }
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.failed = Some(error.clone());
                self.buffer = Vec::new();
                self.read_offset = 0;
                Err(error)
            }
        }
    }

    /// Bytes pushed and not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len().saturating_sub(self.read_offset)
    }

    /// The capacity of the internal buffer, for memory-bound tests and metrics.
    pub fn buffer_capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Takes the bytes pushed and not decoded, e.g. to hand the rest of a stream to another
    /// consumer after its last frame.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        let rest = self
            .buffer
            .split_off(self.read_offset.min(self.buffer.len()));
        self.buffer.clear();
        self.read_offset = 0;
        rest
    }
}
