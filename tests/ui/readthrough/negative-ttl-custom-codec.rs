use cache_manager::{Cache, Codec, CodecError};

/// Stores strings as raw UTF-8, for readers that are not this library.
pub enum Utf8 {}

impl Codec<String> for Utf8 {
    const NAME: &'static str = "utf8";

    fn encode(value: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<String, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(CodecError::new)
    }
}

#[derive(Cache)]
#[cache(namespace = "user:name", key = i64, value = String, codec = Utf8, negative_ttl = 30)]
pub struct UserNameCache;

fn main() {}
