//! How values become bytes in Redis, and back.
//!
//! A cache picks its codec with `#[cache(codec = ...)]`:
//!
//! | codec | stored bytes | needs |
//! | --- | --- | --- |
//! | `"bincode"` (default) | a 5-byte header, then bincode 2 (`standard` config) | `Serialize + DeserializeOwned` |
//! | `"json"` | `serde_json` text | `Serialize + DeserializeOwned` |
//! | `"string"` | the value's `Display` text, read back with `FromStr` | `Display + FromStr` |
//! | a path to your type | whatever your [`Codec`] writes | your bounds |
//!
//! # Why bincode entries carry a header
//!
//! bincode is not self-describing: bytes written for another type, or for an older shape
//! of the same struct, can decode into a wrong value without any error. Every bincode
//! entry therefore starts with a format tag byte ([`FRAME_TAG`]) and a 4-byte fingerprint
//! of the value type's definition, computed by `#[derive(Cache)]` and mixed with the
//! optional `version = N`. A read whose header differs, or whose body does not decode to
//! exactly the end of the buffer, is a corrupt entry: it is logged, deleted and read as a
//! miss.
//!
//! The fingerprint sees what the derive sees. For a value type that derives `Cache`
//! itself (form B) that is the kind of item (struct or enum), every field's and
//! variant's name, order and type *as written*, and the `#[serde(...)]` attributes on
//! them. For a mapping (form A) it is the value type as written (`i64`, `Vec<String>`,
//! `my::Profile`). It does not see inside types defined elsewhere: if a field's type
//! `Address` gains a field, or `my::Profile` of a form A cache changes, the fingerprint
//! stays the same. Bump `version = N` on the cache when that happens.
//!
//! # Compression
//!
//! With `#[cache(..., compress = true)]`, a bincode body of at least [`COMPRESS_ABOVE`]
//! bytes is stored compressed with LZ4 when that makes it smaller, behind its own tag
//! ([`COMPRESSED_TAG`]) and its length before compression. Entries of either tag read
//! back whatever the cache's setting. A compressed entry claiming more than LZ4 can
//! produce from its bytes is corrupt, refused before anything is allocated for it.

use std::fmt::Display;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// The first byte of every entry written by a framed codec (bincode).
pub const FRAME_TAG: u8 = 0xCB;

/// Length of the header of a framed entry: the tag and a 4-byte fingerprint.
pub const FRAME_LEN: usize = 5;

/// The first byte of a framed entry whose body is compressed (`compress = true`): the
/// tag, the fingerprint, the body's length before compression (4 bytes, little endian),
/// then the body compressed with LZ4 (block format).
pub const COMPRESSED_TAG: u8 = 0xCC;

/// Bodies shorter than this are stored as they are even with `compress = true`: below
/// it, LZ4 saves too few bytes to pay for its time (see the project's performance page,
/// `cargo bench -p cache-tests --bench compression`).
pub const COMPRESS_ABOVE: usize = 1024;

/// LZ4 turns one compressed byte into at most 255: a compressed entry claiming more is
/// corrupt (a decompression bomb), refused before anything is allocated for it.
const LZ4_MAX_RATIO: usize = 255;

/// The first byte of a remembered absence (`negative_ttl`): a framed entry with no
/// value. Only framed codecs can hold one; the derive refuses `negative_ttl` on others,
/// whose bytes other services read as values.
pub const ABSENT_TAG: u8 = 0xCA;

/// What a stored entry holds: a value, or the remembered absence of one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stored<V> {
    Value(V),
    Absent,
}

/// Turns values of type `V` into bytes and back.
///
/// Implement it for a marker type of your own and name it in
/// `#[cache(codec = my::Codec)]` to store values in a format the built-in codecs do not
/// cover. `decode` must reject bytes it cannot read completely rather than guess, and
/// must never panic, whatever the bytes are: Redis may hold anything.
#[diagnostic::on_unimplemented(
    message = "the codec `{Self}` cannot store values of type `{V}`",
    note = "the `bincode` and `json` codecs need `serde::Serialize + serde::de::DeserializeOwned`; the `string` codec needs `Display + FromStr`"
)]
pub trait Codec<V>: Send + Sync + 'static {
    /// The name shown in manifests and logs (`"bincode"`, `"json"`, `"string"`, ...).
    const NAME: &'static str;

    /// Whether entries carry the tag-and-fingerprint header. Set it for formats that are
    /// not self-describing, where bytes of another type could decode without an error.
    const FRAMED: bool = false;

    /// Appends the encoded value to `out`.
    fn encode(value: &V, out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Reads a value from the whole of `bytes`.
    fn decode(bytes: &[u8]) -> Result<V, CodecError>;
}

/// The default codec: bincode 2 with serde, compact and fast, framed with a fingerprint.
#[derive(Debug, Clone, Copy)]
pub enum Bincode {}

/// Largest value bincode may claim to allocate while decoding; Redis values stop at 512 MiB.
const BINCODE_LIMIT: usize = 512 << 20;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BINCODE_LIMIT>()
}

impl<V: Serialize + DeserializeOwned> Codec<V> for Bincode {
    const NAME: &'static str = "bincode";
    const FRAMED: bool = true;

    fn encode(value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, out, bincode_config())
            .map(drop)
            .map_err(CodecError::new)
    }

    fn decode(bytes: &[u8]) -> Result<V, CodecError> {
        let (value, read) =
            bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(CodecError::new)?;
        if read != bytes.len() {
            return Err(CodecError::msg(format_args!(
                "{} trailing bytes after the value",
                bytes.len() - read
            )));
        }
        Ok(value)
    }
}

/// JSON text through `serde_json`: readable with `redis-cli` and by other languages.
#[derive(Debug, Clone, Copy)]
pub enum Json {}

impl<V: Serialize + DeserializeOwned> Codec<V> for Json {
    const NAME: &'static str = "json";

    fn encode(value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(out, value).map_err(CodecError::new)
    }

    fn decode(bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::new)
    }
}

/// The value's `Display` text, read back with `FromStr`: the bytes a Python service
/// writes with `str(value)` (integers, UUIDs, plain strings).
#[derive(Debug, Clone, Copy)]
pub enum Text {}

impl<V> Codec<V> for Text
where
    V: Display + FromStr,
    V::Err: Display,
{
    const NAME: &'static str = "string";

    fn encode(value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        use std::io::Write;
        write!(out, "{value}").map_err(CodecError::new)
    }

    fn decode(bytes: &[u8]) -> Result<V, CodecError> {
        let text = std::str::from_utf8(bytes).map_err(CodecError::new)?;
        text.parse::<V>().map_err(CodecError::msg)
    }
}

/// Encodes `value` for storage: the header for framed codecs, then the codec's bytes;
/// with `compress`, a framed body of [`COMPRESS_ABOVE`] bytes or more is compressed
/// when that makes it smaller.
pub(crate) fn encode_entry<V, C: Codec<V>>(
    value: &V,
    fingerprint: u32,
    compress: bool,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    if C::FRAMED {
        out.push(FRAME_TAG);
        out.extend_from_slice(&fingerprint.to_le_bytes());
    }
    C::encode(value, &mut out)?;
    if C::FRAMED && compress && out.len() - FRAME_LEN >= COMPRESS_ABOVE {
        let body = &out[FRAME_LEN..];
        let packed = lz4_flex::block::compress(body);
        if packed.len() + 4 < body.len() {
            let mut framed = Vec::with_capacity(FRAME_LEN + 4 + packed.len());
            framed.push(COMPRESSED_TAG);
            framed.extend_from_slice(&fingerprint.to_le_bytes());
            framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
            framed.extend_from_slice(&packed);
            return Ok(framed);
        }
    }
    Ok(out)
}

/// The body of a compressed entry (after its tag and fingerprint), inflated: at most
/// what LZ4 can produce from its size, and at most what bincode may read, or it is
/// corrupt, before a byte is allocated for it.
fn inflate(rest: &[u8]) -> Result<Vec<u8>, CodecError> {
    let [a, b, c, d, packed @ ..] = rest else {
        return Err(CodecError::msg("compressed entry has no length"));
    };
    let len = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
    let most = packed
        .len()
        .saturating_mul(LZ4_MAX_RATIO)
        .min(BINCODE_LIMIT);
    if len > most {
        return Err(CodecError::msg(format_args!(
            "compressed entry claims {len} bytes from {} compressed ones; at most {most} are possible",
            packed.len()
        )));
    }
    let body = lz4_flex::block::decompress(packed, len).map_err(CodecError::new)?;
    if body.len() != len {
        return Err(CodecError::msg(format_args!(
            "compressed entry inflated to {} bytes, not the {len} it claims",
            body.len()
        )));
    }
    Ok(body)
}

/// The entry remembering that a key has no value: the absence tag and the fingerprint,
/// so another layout of the cache does not take it for its own.
pub(crate) fn encode_absent(fingerprint: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_LEN);
    out.push(ABSENT_TAG);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out
}

/// Decodes a stored entry that may be a remembered absence (framed codecs only).
pub(crate) fn decode_stored<V, C: Codec<V>>(
    bytes: &[u8],
    fingerprint: u32,
) -> Result<Stored<V>, CodecError> {
    if C::FRAMED && bytes.len() == FRAME_LEN && bytes[0] == ABSENT_TAG {
        let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        if stored == fingerprint {
            return Ok(Stored::Absent);
        }
    }
    decode_entry::<V, C>(bytes, fingerprint).map(Stored::Value)
}

/// Decodes a stored entry, checking the header of framed codecs.
pub(crate) fn decode_entry<V, C: Codec<V>>(
    bytes: &[u8],
    fingerprint: u32,
) -> Result<V, CodecError> {
    if !C::FRAMED {
        return C::decode(bytes);
    }
    match bytes {
        [tag @ (FRAME_TAG | COMPRESSED_TAG), fp @ ..] if fp.len() >= 4 => {
            let stored = u32::from_le_bytes([fp[0], fp[1], fp[2], fp[3]]);
            if stored != fingerprint {
                return Err(CodecError::msg(format_args!(
                    "entry was written for another type definition or version \
                     (fingerprint {stored:08x}, expected {fingerprint:08x})"
                )));
            }
            if *tag == COMPRESSED_TAG {
                C::decode(&inflate(&bytes[FRAME_LEN..])?)
            } else {
                C::decode(&bytes[FRAME_LEN..])
            }
        }
        _ => Err(CodecError::msg(
            "entry has no bincode header; it was not written by this cache",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Profile {
        name: String,
        age: u32,
    }

    #[test]
    fn bincode_round_trips_behind_its_header() {
        let p = Profile {
            name: "ada".into(),
            age: 36,
        };
        let bytes = encode_entry::<_, Bincode>(&p, 0xDEADBEEF, false).unwrap();
        assert_eq!(bytes[..FRAME_LEN], [FRAME_TAG, 0xEF, 0xBE, 0xAD, 0xDE]);
        assert_eq!(
            decode_entry::<Profile, Bincode>(&bytes, 0xDEADBEEF).unwrap(),
            p
        );
    }

    #[test]
    fn bincode_rejects_another_fingerprint() {
        let bytes = encode_entry::<_, Bincode>(&7i64, 1, false).unwrap();
        let err = decode_entry::<i64, Bincode>(&bytes, 2).unwrap_err();
        assert!(err.to_string().contains("another type definition"), "{err}");
    }

    #[test]
    fn bincode_rejects_trailing_bytes() {
        let mut bytes = encode_entry::<_, Bincode>(&7u8, 1, false).unwrap();
        bytes.push(0);
        let err = decode_entry::<u8, Bincode>(&bytes, 1).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn bincode_rejects_unframed_bytes() {
        assert!(decode_entry::<u8, Bincode>(b"", 1).is_err());
        assert!(decode_entry::<u8, Bincode>(b"\x07", 1).is_err());
        assert!(decode_entry::<u8, Bincode>(&[FRAME_TAG, 1, 0, 0], 1).is_err());
    }

    #[test]
    fn bincode_survives_huge_length_prefixes() {
        // A length prefix claiming 2^62 elements must be an error, not an allocation abort.
        let mut bytes = vec![FRAME_TAG, 1, 0, 0, 0, 0xFF];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(decode_entry::<Vec<u64>, Bincode>(&bytes, 1).is_err());
    }

    #[test]
    fn text_writes_display_and_reads_from_str() {
        let id = uuid::Uuid::parse_str("550e8400-e29b-41d4-a716-446655440001").unwrap();
        let bytes = encode_entry::<_, Text>(&id, 0, false).unwrap();
        assert_eq!(bytes, b"550e8400-e29b-41d4-a716-446655440001");
        assert_eq!(decode_entry::<uuid::Uuid, Text>(&bytes, 0).unwrap(), id);
        assert!(decode_entry::<i64, Text>(b"12x", 0).is_err());
        assert!(decode_entry::<String, Text>(b"\xff", 0).is_err());
    }

    /// A value whose bincode body is `n` bytes of compressible text (and a few more).
    fn text_of(n: usize) -> String {
        "the quick brown fox jumps over the lazy dog. ".repeat(n / 45 + 1)[..n].to_owned()
    }

    #[test]
    fn large_bodies_are_compressed_behind_their_own_tag_and_read_back() {
        let value = text_of(10_000);
        let plain = encode_entry::<_, Bincode>(&value, 7, false).unwrap();
        let packed = encode_entry::<_, Bincode>(&value, 7, true).unwrap();
        assert_eq!(plain[0], FRAME_TAG);
        assert_eq!(packed[0], COMPRESSED_TAG);
        assert_eq!(packed[1..5], 7u32.to_le_bytes());
        let body_len = u32::from_le_bytes(packed[5..9].try_into().unwrap()) as usize;
        assert_eq!(
            body_len,
            plain.len() - FRAME_LEN,
            "the length before compression"
        );
        assert!(
            packed.len() * 5 < plain.len(),
            "{} of {}",
            packed.len(),
            plain.len()
        );
        // Read back whether the cache compresses or not: the tag says what the body is.
        assert_eq!(decode_entry::<String, Bincode>(&packed, 7).unwrap(), value);
        assert!(
            decode_entry::<String, Bincode>(&packed, 8).is_err(),
            "another layout's"
        );
    }

    #[test]
    fn small_or_incompressible_bodies_are_stored_as_they_are() {
        let small = text_of(COMPRESS_ABOVE - 10);
        let bytes = encode_entry::<_, Bincode>(&small, 7, true).unwrap();
        assert_eq!(bytes[0], FRAME_TAG);
        // Random bytes do not shrink: stored plain rather than grown.
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
        let bytes = encode_entry::<_, Bincode>(&noise, 7, true).unwrap();
        assert_eq!(bytes[0], FRAME_TAG);
        assert_eq!(decode_entry::<Vec<u8>, Bincode>(&bytes, 7).unwrap(), noise);
        // Unframed codecs keep the bytes other services read.
        let text = encode_entry::<_, Json>(&text_of(5000), 0, true).unwrap();
        assert_eq!(text[0], b'"');
    }

    #[test]
    fn compression_starts_at_the_threshold_and_only_where_it_makes_the_entry_smaller() {
        // A `String` of n < 128 bytes is one length byte and n bytes; longer ones take
        // three length bytes (bincode's varint): bodies of COMPRESS_ABOVE - 1 and exactly
        // COMPRESS_ABOVE bytes.
        let below = text_of(COMPRESS_ABOVE - 4);
        let at = text_of(COMPRESS_ABOVE - 3);
        assert_eq!(
            encode_entry::<_, Bincode>(&below, 7, false).unwrap().len() - FRAME_LEN,
            COMPRESS_ABOVE - 1
        );
        assert_eq!(
            encode_entry::<_, Bincode>(&at, 7, false).unwrap().len() - FRAME_LEN,
            COMPRESS_ABOVE
        );
        assert_eq!(
            encode_entry::<_, Bincode>(&below, 7, true).unwrap()[0],
            FRAME_TAG
        );
        assert_eq!(
            encode_entry::<_, Bincode>(&at, 7, true).unwrap()[0],
            COMPRESSED_TAG
        );

        // Bodies from all noise to mostly repeats: what is stored is whichever of the two
        // forms is smaller, the plain one on a tie (a compressed entry carries 4 more
        // bytes, its length before compression).
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut compressed, mut plain, mut ties) = (0, 0, 0);
        for noise in 0..=2000 {
            let mut value: Vec<u8> = (0..noise).map(|_| rng.u8(..)).collect();
            value.resize(2000, b'x');
            let unpacked = encode_entry::<_, Bincode>(&value, 7, false).unwrap();
            let body = &unpacked[FRAME_LEN..];
            let packed_form = FRAME_LEN + 4 + lz4_flex::block::compress(body).len();
            let stored = encode_entry::<_, Bincode>(&value, 7, true).unwrap();
            if packed_form < unpacked.len() {
                assert_eq!(stored[0], COMPRESSED_TAG, "{noise} bytes of noise");
                assert_eq!(stored.len(), packed_form);
                compressed += 1;
            } else {
                assert_eq!(stored, unpacked, "{noise} bytes of noise");
                plain += 1;
                ties += usize::from(packed_form == unpacked.len());
            }
            assert_eq!(decode_entry::<Vec<u8>, Bincode>(&stored, 7).unwrap(), value);
        }
        assert!(
            compressed > 0 && plain > 0,
            "{compressed} compressed, {plain} plain"
        );
        assert!(ties > 0, "no body whose two forms are the same size");
    }

    #[test]
    fn a_decompression_bomb_is_corrupt_and_allocates_nothing() {
        let frame = |len: u32, packed: &[u8]| {
            let mut bytes = vec![COMPRESSED_TAG, 7, 0, 0, 0];
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(packed);
            bytes
        };
        // Claims 4 GiB from 3 bytes: refused from the header alone.
        let err = decode_entry::<String, Bincode>(&frame(u32::MAX, &[0x1f, 0, 0]), 7)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 765 are possible"), "{err}");
        // A real stream whose claimed length is a lie.
        let value = text_of(4000);
        let mut bytes = encode_entry::<_, Bincode>(&value, 7, true).unwrap();
        bytes[5..9].copy_from_slice(&3000u32.to_le_bytes());
        assert!(decode_entry::<String, Bincode>(&bytes, 7).is_err());
        // Truncated: no length, or a cut stream.
        assert!(decode_entry::<String, Bincode>(&[COMPRESSED_TAG, 7, 0, 0, 0, 1], 7).is_err());
        let whole = encode_entry::<_, Bincode>(&value, 7, true).unwrap();
        assert!(decode_entry::<String, Bincode>(&whole[..whole.len() - 3], 7).is_err());
    }

    #[test]
    fn a_remembered_absence_is_neither_a_value_nor_corrupt() {
        let absent = encode_absent(7);
        assert_eq!(absent, [ABSENT_TAG, 7, 0, 0, 0]);
        assert_eq!(
            decode_stored::<Profile, Bincode>(&absent, 7).unwrap(),
            Stored::Absent
        );
        assert!(
            decode_stored::<Profile, Bincode>(&absent, 8).is_err(),
            "another layout's absence is not this one's"
        );
        let p = Profile {
            name: "ada".into(),
            age: 36,
        };
        let bytes = encode_entry::<_, Bincode>(&p, 7, false).unwrap();
        assert_eq!(
            decode_stored::<Profile, Bincode>(&bytes, 7).unwrap(),
            Stored::Value(p)
        );
        // An unframed codec has no absence: those bytes are an ordinary string.
        assert_eq!(
            decode_stored::<String, Text>(b"\xca\x07\0\0\0", 7).ok(),
            None,
            "not UTF-8, so not a string either"
        );
    }

    #[test]
    fn json_is_plain_serde_json() {
        let p = Profile {
            name: "ada".into(),
            age: 36,
        };
        let bytes = encode_entry::<_, Json>(&p, 0, false).unwrap();
        assert_eq!(bytes, br#"{"name":"ada","age":36}"#);
        assert_eq!(
            decode_entry::<Profile, Json>(br#"{"name": "ada", "age": 36}"#, 0).unwrap(),
            p
        );
        assert!(decode_entry::<Profile, Json>(br#"{"name":"ada"}"#, 0).is_err());
    }

    mod properties {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        struct Tagged {
            name: String,
            tags: Vec<String>,
        }

        /// Strings with the characters that break naive encodings.
        fn nasty() -> impl Strategy<Value = String> {
            proptest::string::string_regex("[:{}*\\n\\r\\t a-z\\x00é€😀]{0,12}").unwrap()
        }

        proptest! {
            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let mut framed = vec![FRAME_TAG, 0x78, 0x56, 0x34, 0x12];
                framed.extend_from_slice(&bytes);
                for input in [&bytes, &framed] {
                    let _ = decode_entry::<Tagged, Bincode>(input, 0x1234_5678);
                    let _ = decode_entry::<Vec<String>, Bincode>(input, 0x1234_5678);
                    let _ = decode_entry::<HashMap<String, u64>, Bincode>(input, 0x1234_5678);
                    let _ = decode_entry::<i64, Bincode>(input, 0x1234_5678);
                    let _ = decode_entry::<Tagged, Json>(input, 0);
                    let _ = decode_entry::<i64, Text>(input, 0);
                    let _ = decode_entry::<uuid::Uuid, Text>(input, 0);
                    let _ = decode_entry::<String, Text>(input, 0);
                }
            }

            #[test]
            fn every_codec_round_trips_what_it_encodes(name in nasty(), tags in proptest::collection::vec(nasty(), 0..3), n: i64) {
                let p = Tagged { name: name.clone(), tags };
                let bytes = encode_entry::<_, Bincode>(&p, 7, false).unwrap();
                prop_assert_eq!(decode_entry::<Tagged, Bincode>(&bytes, 7).unwrap(), p.clone());
                let bytes = encode_entry::<_, Json>(&p, 0, false).unwrap();
                prop_assert_eq!(decode_entry::<Tagged, Json>(&bytes, 0).unwrap(), p);
                let bytes = encode_entry::<_, Text>(&n, 0, false).unwrap();
                prop_assert_eq!(decode_entry::<i64, Text>(&bytes, 0).unwrap(), n);
                let bytes = encode_entry::<String, Text>(&name, 0, false).unwrap();
                prop_assert_eq!(decode_entry::<String, Text>(&bytes, 0).unwrap(), name);
            }
        }
    }
}
