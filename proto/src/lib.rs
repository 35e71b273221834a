//! The Sonde wire protocol, `sonde.v1`.
//!
//! Owns the message types shared by the PHP extension, the agent and the
//! collector, and (feature `grpc`) the agent -> collector service. It holds
//! no logic; docs/protocol.md describes each message.
#![forbid(unsafe_code)]

/// Version 1 of the protocol.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sonde.v1.rs"));
}

/// The protocol version these types implement.
pub const PROTOCOL_VERSION: u32 = 1;
