//! Where the agent's data comes from: the PHP extension's socket, and the
//! host itself (system and php-fpm pool metrics).

pub mod host;
pub mod socket;
