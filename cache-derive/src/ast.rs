//! A typed view of the item `#[derive(Cache)]` is on.

use syn::{Data, DeriveInput};

use crate::attr::{self, Attrs};
use crate::ctxt::Ctxt;

/// What kind of item carries the attribute.
pub(crate) enum Shape {
    /// A struct without fields (`struct Name;`, `{}` or `()`): declares a mapping (form A).
    Unit,
    /// A struct with fields: a value type cached itself (form B).
    Struct,
    /// An enum: a value type cached itself (form B).
    Enum,
    /// A union, which cannot be cached.
    Union,
}

pub(crate) struct Input<'a> {
    pub item: &'a DeriveInput,
    pub shape: Shape,
    pub attrs: Attrs,
}

impl<'a> Input<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, item: &'a DeriveInput) -> Self {
        let shape = match &item.data {
            Data::Struct(s) if s.fields.is_empty() => Shape::Unit,
            Data::Struct(_) => Shape::Struct,
            Data::Enum(_) => Shape::Enum,
            Data::Union(_) => Shape::Union,
        };
        Input {
            item,
            shape,
            attrs: attr::parse(cx, &item.attrs),
        }
    }

    /// Form B: the item is the value type.
    pub(crate) fn is_value_type(&self) -> bool {
        self.attrs.value.is_none() && matches!(self.shape, Shape::Struct | Shape::Enum)
    }
}
