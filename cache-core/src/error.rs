//! The one error type of the library.

use std::error::Error as StdError;
use std::fmt;

/// What a cache call or `connect` can fail with.
///
/// Connection problems are deliberately absent: when Redis is unreachable, reads miss and
/// writes return `Ok(false)` (the cache is a luxury). Only mistakes the caller can fix come
/// out as errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The value could not be encoded with the cache's codec; nothing was written.
    #[error("cache `{namespace}`: cannot encode the value: {source}")]
    Serialization {
        /// Namespace of the cache the value was meant for.
        namespace: &'static str,
        /// What the codec reported.
        source: CodecError,
    },
    /// The call was rejected before anything was sent (batch too large, zero TTL, ...).
    #[error("cache `{namespace}`: {reason}")]
    Validation {
        /// Namespace of the cache the call was made on.
        namespace: &'static str,
        /// What was wrong and what is allowed.
        reason: String,
    },
    /// `connect` was given a URL or option it cannot use; the message says which part.
    ///
    /// The message never contains the URL's password.
    #[error("invalid cache configuration: {reason}")]
    Config {
        /// Which part of the URL or option is wrong, and what is allowed.
        reason: String,
    },
}

impl CacheError {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        CacheError::Config {
            reason: reason.into(),
        }
    }

    pub(crate) fn validation(namespace: &'static str, reason: impl Into<String>) -> Self {
        CacheError::Validation {
            namespace,
            reason: reason.into(),
        }
    }
}

/// A codec's failure to encode or decode a value.
pub struct CodecError(Box<dyn StdError + Send + Sync>);

impl CodecError {
    /// Wraps the error a serializer or parser returned.
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        CodecError(error.into())
    }

    /// A codec error with a plain message, for checks a codec makes itself.
    pub fn msg(message: impl fmt::Display) -> Self {
        CodecError(message.to_string().into())
    }
}

impl fmt::Debug for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for CodecError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}
