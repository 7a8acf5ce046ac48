//! A typed view of the item `#[derive(Cache)]` is on.

use syn::{Data, DeriveInput, Fields};

use crate::attr::{self, Attrs};
use crate::ctxt::Ctxt;

/// What kind of item carries the attribute.
pub(crate) enum Shape {
    /// `struct Name;`: declares a mapping (form A) when it has `value = Type`.
    Unit,
    /// A struct with fields or an enum: a value type cached itself (form B).
    Data,
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
            Data::Struct(s) if matches!(s.fields, Fields::Unit) => Shape::Unit,
            Data::Struct(_) | Data::Enum(_) => Shape::Data,
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
        self.attrs.value.is_none() && matches!(self.shape, Shape::Data)
    }
}
