//! Layout records of the `repr(C)` mirror, for the header drift test.
//!
//! Every struct in [`crate::ffi`] is declared through `abi_struct!`, which
//! also records each field's name, offset and size here, and every constant
//! through `abi_consts!`, which records its name and value. The drift test
//! (`abi/tests/header.rs`) turns these records into C static assertions and
//! compiles them against `include/molt.h`: a field the header lacks, a field
//! at another offset or of another size, a struct of another size, or a
//! constant with another value fails the compile, and a constant the header
//! defines that the mirror lacks fails the test.

/// One field of a mirrored struct.
#[derive(Debug, Clone, Copy)]
pub struct FieldLayout {
    /// The field's name, the same in C and Rust.
    pub name: &'static str,
    /// Its byte offset.
    pub offset: usize,
    /// Its size in bytes.
    pub size: usize,
}

/// One mirrored struct.
#[derive(Debug, Clone, Copy)]
pub struct StructLayout {
    /// The C typedef name.
    pub name: &'static str,
    /// `sizeof`.
    pub size: usize,
    /// `alignof`.
    pub align: usize,
    /// Every field, in declaration order.
    pub fields: &'static [FieldLayout],
}

/// One mirrored constant, widened to `i128` (every constant fits).
#[derive(Debug, Clone, Copy)]
pub struct ConstLayout {
    /// The C macro name.
    pub name: &'static str,
    /// Its value.
    pub value: i128,
}

/// Implemented by every struct declared with `abi_struct!`.
pub trait AbiLayout {
    /// The layout record.
    const LAYOUT: StructLayout;
}

macro_rules! abi_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        impl $crate::layout::AbiLayout for $name {
            const LAYOUT: $crate::layout::StructLayout = $crate::layout::StructLayout {
                name: stringify!($name),
                size: ::core::mem::size_of::<$name>(),
                align: ::core::mem::align_of::<$name>(),
                fields: &[
                    $( $crate::layout::FieldLayout {
                        name: stringify!($field),
                        offset: ::core::mem::offset_of!($name, $field),
                        size: ::core::mem::size_of::<$ty>(),
                    } ),*
                ],
            };
        }
    };
}

macro_rules! abi_consts {
    ( $( $(#[$meta:meta])* pub const $name:ident : $ty:ty = $value:expr; )* ) => {
        $( $(#[$meta])* pub const $name: $ty = $value; )*

        /// Every constant of the header, for the drift test.
        pub const CONSTANTS: &[$crate::layout::ConstLayout] = &[
            $( $crate::layout::ConstLayout { name: stringify!($name), value: $name as i128 } ),*
        ];
    };
}

pub(crate) use abi_consts;
pub(crate) use abi_struct;
