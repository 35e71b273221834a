//! Everything the agent holds between the socket and the collector: the
//! bounded in-memory record queue, the batcher, the window of sent but not yet
//! acknowledged batches, and the disk spool used at shutdown. Every buffer
//! here has a bound and a counted drop policy; none of it does network I/O.

pub mod batch;
pub mod outbox;
pub mod queue;
pub mod spool;
