//! Where the agent's data comes from: the PHP extension's socket, and the
//! host itself (system and php-fpm pool metrics), and the in-flight
//! scoreboard the extension keeps in shared memory.

pub mod fpm_status;
pub mod host;
pub mod ring;
pub mod scoreboard;
pub mod shared_file;
pub mod socket;
pub mod wire;
