//! The value the benches read and write, so their figures speak of the same bytes.

use serde::{Deserialize, Serialize};

/// A user-profile-like record: 47 bytes in bincode with the header, about 90 in JSON,
/// for every key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// A numeric id.
    pub id: u64,
    /// A display name.
    pub name: String,
    /// An address.
    pub email: String,
    /// A counter.
    pub score: u32,
    /// A flag.
    pub active: bool,
}

impl Profile {
    /// The profile of key `k`.
    pub fn of(k: u64) -> Self {
        Profile {
            // Fixed widths: the same encoded size for every key.
            id: 1_000_000 + k,
            name: format!("user-{k:05}"),
            email: format!("user{k:05}@example.com"),
            score: 1_000 + (k % 100) as u32,
            active: true,
        }
    }
}
