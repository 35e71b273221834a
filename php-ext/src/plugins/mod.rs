//! Instrumented libraries: one file each, plus its line in `ALL`.

pub mod pdo;

use crate::hooks::HookSpec;

/// Every plugin's hooks.
pub const ALL: &[&[HookSpec]] = &[pdo::HOOKS];
