//! What the throughput and instruction benches share: the raw side's hand-written
//! framing of a bincode entry, so both compare the library with the same raw work.

use cache_manager::codec::FRAME_TAG;
use cache_tests::bench_data::Profile;

/// The bytes the library stores for `value` in a bincode cache whose layout has
/// `fingerprint`, written by hand as a raw client would: the frame tag, the
/// fingerprint, the bincode body.
pub fn encode_bincode(value: &Profile, fingerprint: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FRAME_TAG);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("a Profile encodes");
    out
}

/// The value of [`encode_bincode`]'s bytes, checked as the library checks them: `None`
/// for another layout's frame, a bad body or trailing bytes.
pub fn decode_bincode(bytes: &[u8], fingerprint: u32) -> Option<Profile> {
    let body = match bytes {
        [FRAME_TAG, a, b, c, d, body @ ..]
            if u32::from_le_bytes([*a, *b, *c, *d]) == fingerprint =>
        {
            body
        }
        _ => return None,
    };
    let (value, read) =
        bincode::serde::decode_from_slice(body, bincode::config::standard()).ok()?;
    (read == body.len()).then_some(value)
}
