//! sonde-capture: what the PHP extension captured of one request, PHP-free.
//!
//! `spans` is the per-request buffer the extension's hooks record into (no
//! allocation on the hook path). At request end the extension copies that
//! buffer and the request's values as they are into one `raw` frame — a
//! few `memcpy`s, no normalising, no protobuf — and the agent turns it into
//! a `sonde.v1.RequestRecord` with `record` (normalising SQL, naming the
//! endpoint and DB instances, redacting the URL, writing protobuf with
//! `pb`). The expensive half of the work thus runs once per host in the
//! agent, with caches shared by all workers, not in every PHP process.
//! The extension still encodes a record itself when its raw frame would
//! not fit a frame (thousands of spans): the same code, so both paths give
//! the same bytes.

pub mod pb;
pub mod raw;
pub mod record;
pub mod spans;
