//! Where the agent's data comes from. Today: the PHP extension's socket.
//! (Host and php-fpm pool metrics will be sources beside it.)

pub mod socket;
