//! Reading `FlatBufferRows`, verified first, written from the service's
//! schema (`timeseries.fbs`): tables, slots and types. The layout is what
//! [`flatbuffers`]' generated code would read; it is written out here so
//! the server depends on no schema compiler.

use flatbuffers::{
    Follow, ForwardsUOffset, InvalidFlatbuffer, Table, Vector, Verifiable, Verifier,
    VerifierOptions,
};

/// vtable offset of slot `n`.
const fn slot(n: u16) -> u16 {
    4 + 2 * n
}

macro_rules! table {
    ($name:ident) => {
        #[derive(Clone, Copy)]
        pub struct $name<'a> {
            t: Table<'a>,
        }

        impl<'a> Follow<'a> for $name<'a> {
            type Inner = $name<'a>;
            unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
                // SAFETY: the caller (flatbuffers) hands a verified location.
                $name {
                    t: unsafe { Table::new(buf, loc) },
                }
            }
        }
    };
}

macro_rules! field {
    ($fn:ident, $slot:expr, $ty:ty) => {
        /// The field, if present.
        pub fn $fn(&self) -> Option<<$ty as Follow<'a>>::Inner> {
            // SAFETY: the buffer was verified against this table's layout.
            unsafe { self.t.get::<$ty>(slot($slot), None) }
        }
    };
    ($fn:ident, $slot:expr, $ty:ty, $default:expr) => {
        /// The field, or its default.
        pub fn $fn(&self) -> $ty {
            // SAFETY: the buffer was verified against this table's layout.
            unsafe {
                self.t
                    .get::<$ty>(slot($slot), Some($default))
                    .unwrap_or($default)
            }
        }
    };
}

type Strings<'a> = ForwardsUOffset<Vector<'a, ForwardsUOffset<&'a str>>>;

table!(Rows);
impl<'a> Rows<'a> {
    field!(
        row_groups,
        0,
        ForwardsUOffset<Vector<'a, ForwardsUOffset<RowGroup<'a>>>>
    );
}
impl Verifiable for Rows<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<'_, ForwardsUOffset<RowGroup>>>>(
                "row_groups",
                slot(0),
                false,
            )?
            .finish();
        Ok(())
    }
}

table!(RowGroup);
impl<'a> RowGroup<'a> {
    field!(measurement_name, 0, ForwardsUOffset<&'a str>);
    field!(field_names, 1, Strings<'a>);
    field!(field_types, 2, ForwardsUOffset<Vector<'a, u8>>);
    field!(
        rows,
        3,
        ForwardsUOffset<Vector<'a, ForwardsUOffset<RowInGroup<'a>>>>
    );
}
impl Verifiable for RowGroup<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("measurement_name", slot(0), false)?
            .visit_field::<Strings>("field_names", slot(1), false)?
            .visit_field::<ForwardsUOffset<Vector<'_, u8>>>("field_types", slot(2), false)?
            .visit_field::<ForwardsUOffset<Vector<'_, ForwardsUOffset<RowInGroup>>>>(
                "rows",
                slot(3),
                false,
            )?
            .finish();
        Ok(())
    }
}

table!(RowInGroup);
impl<'a> RowInGroup<'a> {
    field!(data_source, 0, ForwardsUOffset<&'a str>);
    field!(tags, 1, ForwardsUOffset<&'a str>);
    field!(time, 2, i64, 0);
    field!(field_values, 3, ForwardsUOffset<FieldValues<'a>>);
    field!(
        tag_list,
        5,
        ForwardsUOffset<Vector<'a, ForwardsUOffset<Tag<'a>>>>
    );
}
impl Verifiable for RowInGroup<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("data_source", slot(0), false)?
            .visit_field::<ForwardsUOffset<&str>>("tags", slot(1), false)?
            .visit_field::<i64>("time", slot(2), false)?
            .visit_field::<ForwardsUOffset<FieldValues>>("field_values", slot(3), false)?
            .visit_field::<u32>("meta_cache_update_time", slot(4), false)?
            .visit_field::<ForwardsUOffset<Vector<'_, ForwardsUOffset<Tag>>>>(
                "tag_list",
                slot(5),
                false,
            )?
            .finish();
        Ok(())
    }
}

table!(FieldValues);
impl<'a> FieldValues<'a> {
    field!(long_values, 0, ForwardsUOffset<Vector<'a, i64>>);
    field!(bool_values, 1, ForwardsUOffset<Vector<'a, bool>>);
    field!(double_values, 2, ForwardsUOffset<Vector<'a, f64>>);
    field!(string_values, 3, Strings<'a>);
    field!(
        binary_values,
        4,
        ForwardsUOffset<Vector<'a, ForwardsUOffset<BytesValue<'a>>>>
    );
}
impl Verifiable for FieldValues<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<'_, i64>>>("long_values", slot(0), false)?
            .visit_field::<ForwardsUOffset<Vector<'_, bool>>>("bool_values", slot(1), false)?
            .visit_field::<ForwardsUOffset<Vector<'_, f64>>>("double_values", slot(2), false)?
            .visit_field::<Strings>("string_values", slot(3), false)?
            .visit_field::<ForwardsUOffset<Vector<'_, ForwardsUOffset<BytesValue>>>>(
                "binary_values",
                slot(4),
                false,
            )?
            .finish();
        Ok(())
    }
}

table!(BytesValue);
impl<'a> BytesValue<'a> {
    field!(value, 0, ForwardsUOffset<Vector<'a, u8>>);
}
impl Verifiable for BytesValue<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<'_, u8>>>("value", slot(0), false)?
            .finish();
        Ok(())
    }
}

table!(Tag);
impl<'a> Tag<'a> {
    field!(name, 0, ForwardsUOffset<&'a str>);
    field!(value, 1, ForwardsUOffset<&'a str>);
}
impl Verifiable for Tag<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("name", slot(0), false)?
            .visit_field::<ForwardsUOffset<&str>>("value", slot(1), false)?
            .finish();
        Ok(())
    }
}

/// The verified root of a `FlatBufferRows` buffer.
pub fn rows(buf: &[u8]) -> Result<Rows<'_>, InvalidFlatbuffer> {
    let options = VerifierOptions {
        max_tables: 10_000_000,
        max_apparent_size: 1 << 31,
        ..VerifierOptions::default()
    };
    flatbuffers::root_with_opts::<Rows>(&options, buf)
}
