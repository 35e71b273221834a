//! Everything the agent holds between the sources and the collector: the
//! records as received, the bounded in-memory record queue, the batcher,
//! the window of sent but not yet acknowledged batches, the disk spool, and
//! how far what was read from the record ring is durable.
//! Every buffer here has a bound and a counted drop policy; none of it does
//! network I/O.

pub mod batch;
pub mod durable;
pub mod outbox;
pub mod queue;
pub mod record;
pub mod spool;
