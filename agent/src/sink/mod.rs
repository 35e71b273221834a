//! Where the agent's data goes. Today: the collector's gRPC stream.

pub mod grpc;
