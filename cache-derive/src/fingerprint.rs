//! The fingerprint of a value type's definition, stored in bincode entries.
//!
//! It hashes what the derive can see, with whitespace removed so formatting does not
//! matter: for a value type (form B) its kind, the names, order and types of its fields
//! and variants, and its `#[serde(...)]` attributes; for a mapping (form A) the value type
//! as written. The declared `version` is mixed in last.

use quote::ToTokens;
use syn::{Attribute, Data, DeriveInput, Fields, Type};

/// FNV-1a, 64 bits: tiny, stable across compilers and platforms.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") hash differently.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn tokens(&mut self, tokens: impl ToTokens) {
        let text: String = tokens
            .to_token_stream()
            .to_string()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        self.write(text.as_bytes());
    }

    fn serde_attrs(&mut self, attrs: &[Attribute]) {
        for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
            self.tokens(attr);
        }
    }

    fn fields(&mut self, fields: &Fields) {
        match fields {
            Fields::Named(_) => self.write(b"named"),
            Fields::Unnamed(_) => self.write(b"tuple"),
            Fields::Unit => self.write(b"unit"),
        }
        for field in fields {
            self.serde_attrs(&field.attrs);
            match &field.ident {
                Some(name) => self.write(name.to_string().as_bytes()),
                None => self.write(b"_"),
            }
            self.tokens(&field.ty);
        }
    }
}

/// Form B: the definition of the value type itself.
pub(crate) fn of_item(item: &DeriveInput) -> u64 {
    let mut h = Fnv::new();
    h.serde_attrs(&item.attrs);
    match &item.data {
        Data::Struct(s) => {
            h.write(b"struct");
            h.fields(&s.fields);
        }
        Data::Enum(e) => {
            h.write(b"enum");
            for variant in &e.variants {
                h.serde_attrs(&variant.attrs);
                h.write(variant.ident.to_string().as_bytes());
                h.fields(&variant.fields);
            }
        }
        Data::Union(_) => h.write(b"union"),
    }
    h.0
}

/// Form A: the value type as written.
pub(crate) fn of_type(ty: &Type) -> u64 {
    let mut h = Fnv::new();
    h.write(b"type");
    h.tokens(ty);
    h.0
}

/// Mixes in the version and folds to the 32 bits stored in each entry.
pub(crate) fn finish(definition: u64, version: u32) -> u32 {
    let mut h = Fnv(definition);
    h.write(&version.to_le_bytes());
    (h.0 ^ (h.0 >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(src: &str) -> u32 {
        finish(of_item(&syn::parse_str(src).unwrap()), 0)
    }

    #[test]
    fn formatting_does_not_matter_but_shape_does() {
        let base = item("struct P { name: String, age: u32 }");
        assert_eq!(
            base,
            item("/// docs\n#[derive(Debug)] struct Q {\n  name : String,\n  age: u32, }")
        );
        assert_ne!(base, item("struct P { name: String, age: u64 }"));
        assert_ne!(base, item("struct P { age: u32, name: String }"));
        assert_ne!(base, item("struct P { name: String, years: u32 }"));
        assert_ne!(
            base,
            item("struct P { name: String, age: u32, email: String }")
        );
        assert_ne!(
            base,
            item("#[serde(rename_all = \"camelCase\")] struct P { name: String, age: u32 }")
        );
        assert_ne!(base, item("struct P(String, u32);"));
        assert_ne!(item("enum E { A, B }"), item("enum E { B, A }"));
    }

    #[test]
    fn version_changes_the_fingerprint() {
        let ty: Type = syn::parse_str("i64").unwrap();
        assert_ne!(finish(of_type(&ty), 0), finish(of_type(&ty), 1));
        let other: Type = syn::parse_str("u64").unwrap();
        assert_ne!(finish(of_type(&ty), 0), finish(of_type(&other), 0));
    }
}
