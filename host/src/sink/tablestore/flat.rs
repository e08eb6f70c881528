//! The FlatBuffer writer of `FlatBufferRows` (the schema is in the module
//! doc of [`super`]): one row group per row, as the SDKs write them, with
//! every text a request repeats written once.
//!
//! It writes as the `flatbuffers` crate's builder writes (objects back to
//! front, the same alignment, one vtable shared by all the tables it
//! fits), without the builder's general bookkeeping: each kind of table
//! here always has the same layout, so its vtable is known ahead and
//! written once per request. Bytes differ from the SDKs' builders'; what
//! they decode to does not.
//!
//! What this module must never do: write an offset that points backwards,
//! an unaligned scalar, or point a request at a text of an earlier
//! request. The test server verifies every buffer it receives, and the
//! official SDK decodes weir's bodies in `tests/tablestore.rs`.

use std::collections::HashMap;

use super::encode::DataType;

/// FlatBuffer bytes a typical row takes, to size a request's buffer up
/// front (it grows when rows are larger).
const ROW_BYTES_GUESS: usize = 256;

/// A typed value as the FlatBuffer writer reads it.
#[derive(Clone, Copy, Debug)]
pub(super) enum FieldRef<'a> {
    Long(i64),
    Boolean(bool),
    Double(f64),
    String(&'a str),
    Binary(&'a [u8]),
}

impl FieldRef<'_> {
    pub(super) fn data_type(self) -> DataType {
        match self {
            FieldRef::Long(_) => DataType::Long,
            FieldRef::Boolean(_) => DataType::Boolean,
            FieldRef::Double(_) => DataType::Double,
            FieldRef::String(_) => DataType::String,
            FieldRef::Binary(_) => DataType::Binary,
        }
    }
}

/// What the FlatBuffer writer and the size estimate read of a row: an
/// owned [`super::encode::Row`], or the row
/// [`super::encode::RowSpec::encode`] is building.
pub(super) trait RowView {
    fn measurement(&self) -> &str;
    fn data_source(&self) -> &str;
    /// Sorted by name.
    fn tags(&self) -> impl Iterator<Item = (&str, &str)>;
    fn time_us(&self) -> i64;
    /// Sorted by name.
    fn fields(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)>;
}

/// A FlatBuffer written back to front, as FlatBuffers builders write: an
/// object is written before whatever points to it, so every offset points
/// forward. Positions are counted from the end ("revloc", what the
/// `flatbuffers` crate calls `used_space`); the finished buffer's length
/// is a multiple of 8, so a revloc aligned to n is an offset aligned to n.
struct Down {
    buf: Vec<u8>,
    /// Data is `buf[head..]`.
    head: usize,
}

impl Down {
    fn with_capacity(bytes: usize) -> Down {
        Down {
            buf: vec![0; bytes],
            head: bytes,
        }
    }

    /// Bytes written, i.e. the revloc of the last thing written.
    #[inline]
    fn used(&self) -> u32 {
        // A request body stays under 4 MB, far from u32::MAX.
        (self.buf.len() - self.head) as u32
    }

    /// The next `n` bytes below what is written, to fill.
    #[inline]
    fn space(&mut self, n: usize) -> &mut [u8] {
        if self.head < n {
            self.grow(n);
        }
        self.head -= n;
        &mut self.buf[self.head..self.head + n]
    }

    #[cold]
    fn grow(&mut self, n: usize) {
        let used = self.buf.len() - self.head;
        let len = (self.buf.len() * 2).max(used + n).max(1024);
        let mut buf = vec![0; len];
        buf[len - used..].copy_from_slice(&self.buf[self.head..]);
        self.buf = buf;
        self.head = len - used;
    }

    /// Pads with zeros so that `len` more bytes end on a multiple of
    /// `alignment` (a power of two).
    #[inline]
    fn align(&mut self, len: usize, alignment: usize) {
        let pad = (self.used() as usize + len).wrapping_neg() & (alignment - 1);
        if pad > 0 {
            self.space(pad).fill(0);
        }
    }

    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        self.space(b.len()).copy_from_slice(b);
    }

    #[inline]
    fn u16(&mut self, v: u16) {
        self.align(2, 2);
        self.bytes(&v.to_le_bytes());
    }

    #[inline]
    fn u32(&mut self, v: u32) {
        self.align(4, 4);
        self.bytes(&v.to_le_bytes());
    }

    /// An offset to what was written at revloc `to`; returns its own revloc.
    #[inline]
    fn offset(&mut self, to: u32) -> u32 {
        self.align(4, 4);
        let at = self.used() + 4;
        self.bytes(&(at - to).to_le_bytes());
        at
    }

    /// A string: length, UTF-8 bytes, NUL.
    fn string(&mut self, s: &str) -> u32 {
        self.align(s.len() + 1, 4);
        self.space(1)[0] = 0;
        self.bytes(s.as_bytes());
        self.u32(s.len() as u32);
        self.used()
    }

    /// A vector of `n` little-endian scalars of `size` bytes each, which
    /// `write` fills in order.
    fn scalars(&mut self, n: usize, size: usize, write: impl FnOnce(&mut [u8])) -> u32 {
        self.align(n * size, size.max(4));
        write(self.space(n * size));
        self.u32(n as u32);
        self.used()
    }

    /// A vector of offsets to `targets`.
    fn offsets(&mut self, targets: &[u32]) -> u32 {
        self.align(targets.len() * 4, 4);
        for &t in targets.iter().rev() {
            self.offset(t);
        }
        self.u32(targets.len() as u32);
        self.used()
    }

    /// A vtable: its size, the table's inline size, then each slot's
    /// offset in the table (0: absent).
    fn vtable(&mut self, table_bytes: u16, slots: &[u16]) -> u32 {
        for &s in slots.iter().rev() {
            self.u16(s);
        }
        self.u16(table_bytes);
        self.u16(4 + 2 * slots.len() as u16);
        self.used()
    }

    /// Starts a table by its vtable (written earlier, at revloc
    /// `vtable`); the table's fields were written just before. Returns
    /// the table's revloc.
    fn table(&mut self, vtable: u32) -> u32 {
        self.align(4, 4);
        let at = self.used() + 4;
        // The vtable is at `table - soffset`, here after the table.
        let soffset = vtable as i64 - at as i64;
        self.bytes(&(soffset as i32).to_le_bytes());
        at
    }

    fn clear(&mut self) {
        self.head = self.buf.len();
    }
}

/// The vtables of a request, each written once, on first use, and shared
/// by every table of its kind. Tables are laid out the same way every
/// time (see [`Flat::push`]), so one vtable per kind fits them all.
#[derive(Default)]
struct Vtables {
    bytes_value: Option<u32>,
    tag: Option<u32>,
    /// By the set of typed vectors present (bit n: slot n).
    field_values: [Option<u32>; 32],
    row: Option<u32>,
    group: Option<u32>,
    root: Option<u32>,
}

/// One request's `FlatBufferRows`, written row after row. The buffer and
/// the scratch vectors are reused request after request.
pub(super) struct Flat {
    out: Down,
    vtables: Vtables,
    /// Every shared text of this request and where it is.
    shared: HashMap<String, u32>,
    groups: Vec<u32>,
    names: Vec<u32>,
    strings: Vec<u32>,
    binaries: Vec<u32>,
    tags: Vec<u32>,
    /// The texts the previous row pointed to, slot by slot.
    measurement: Recent,
    data_source: Recent,
    legacy_tags: Recent,
    field_names: Vec<Recent>,
    tag_texts: Vec<(Recent, Recent)>,
}

/// The text one slot of the previous row pointed to. Rows of a request
/// mostly repeat their neighbour's names, measurement, data source and
/// tags: comparing with it is cheaper than looking the text up among all
/// the request's shared strings, which is only done when it differs.
#[derive(Default)]
struct Recent {
    text: String,
    at: Option<u32>,
}

impl Flat {
    pub(super) fn with_rows(rows: usize) -> Flat {
        Flat {
            out: Down::with_capacity(ROW_BYTES_GUESS * rows.max(1)),
            vtables: Vtables::default(),
            shared: Default::default(),
            groups: Vec::with_capacity(rows),
            names: Vec::new(),
            strings: Vec::new(),
            binaries: Vec::new(),
            tags: Vec::new(),
            measurement: Recent::default(),
            data_source: Recent::default(),
            legacy_tags: Recent::default(),
            field_names: Vec::new(),
            tag_texts: Vec::new(),
        }
    }

    /// Where `text` is: the same as the previous row's in this slot, or
    /// written once per request and shared.
    fn shared(
        out: &mut Down,
        shared: &mut HashMap<String, u32>,
        recent: &mut Recent,
        text: &str,
    ) -> u32 {
        if let Some(at) = recent.at
            && recent.text == text
        {
            return at;
        }
        let at = match shared.get(text) {
            Some(&at) => at,
            None => {
                let at = out.string(text);
                shared.insert(text.to_owned(), at);
                at
            }
        };
        recent.text.clear();
        recent.text.push_str(text);
        recent.at = Some(at);
        at
    }

    /// Adds `row` as a row group of its own: `FlatBufferRowGroup {
    /// measurement_name, field_names, field_types, rows: [
    /// FlatBufferRowInGroup { data_source, tags: "", time, field_values,
    /// tag_list } ] }`.
    pub(super) fn push(&mut self, row: &impl RowView) {
        let out = &mut self.out;
        let vt = &mut self.vtables;
        let shared = &mut self.shared;
        let measurement = Self::shared(out, shared, &mut self.measurement, row.measurement());
        self.names.clear();
        let (mut longs, mut bools, mut doubles) = (0, 0, 0);
        for (i, (name, value)) in row.fields().enumerate() {
            if i == self.field_names.len() {
                self.field_names.push(Recent::default());
            }
            let at = Self::shared(out, shared, &mut self.field_names[i], name);
            self.names.push(at);
            match value {
                FieldRef::Long(_) => longs += 1,
                FieldRef::Boolean(_) => bools += 1,
                FieldRef::Double(_) => doubles += 1,
                _ => {}
            }
        }
        let field_names = out.offsets(&self.names);
        let n = self.names.len();
        let field_types = out.scalars(n, 1, |b| {
            for (slot, (_, value)) in b.iter_mut().zip(row.fields()) {
                *slot = value.data_type() as u8;
            }
        });

        // Each value in the typed vector of its type, in field order.
        self.strings.clear();
        self.binaries.clear();
        for (_, value) in row.fields() {
            match value {
                FieldRef::String(v) => self.strings.push(out.string(v)),
                FieldRef::Binary(v) => {
                    // BytesValue { value: [byte] }
                    let bytes = out.scalars(v.len(), 1, |b| b.copy_from_slice(v));
                    let vtable = *vt.bytes_value.get_or_insert_with(|| out.vtable(8, &[4]));
                    out.offset(bytes);
                    self.binaries.push(out.table(vtable));
                }
                _ => {}
            }
        }
        // Empty typed vectors are left out, as the SDKs do.
        let mut present = [None; 5];
        if longs > 0 {
            present[0] = Some(out.scalars(longs, 8, |b| {
                let values = row.fields().filter_map(|(_, v)| match v {
                    FieldRef::Long(x) => Some(x.to_le_bytes()),
                    _ => None,
                });
                for (slot, v) in b.chunks_exact_mut(8).zip(values) {
                    slot.copy_from_slice(&v);
                }
            }));
        }
        if bools > 0 {
            present[1] = Some(out.scalars(bools, 1, |b| {
                let values = row.fields().filter_map(|(_, v)| match v {
                    FieldRef::Boolean(x) => Some(u8::from(x)),
                    _ => None,
                });
                for (slot, v) in b.iter_mut().zip(values) {
                    *slot = v;
                }
            }));
        }
        if doubles > 0 {
            present[2] = Some(out.scalars(doubles, 8, |b| {
                let values = row.fields().filter_map(|(_, v)| match v {
                    FieldRef::Double(x) => Some(x.to_le_bytes()),
                    _ => None,
                });
                for (slot, v) in b.chunks_exact_mut(8).zip(values) {
                    slot.copy_from_slice(&v);
                }
            }));
        }
        if !self.strings.is_empty() {
            present[3] = Some(out.offsets(&self.strings));
        }
        if !self.binaries.is_empty() {
            present[4] = Some(out.offsets(&self.binaries));
        }
        // FieldValues: the present slots in slot order, 4 bytes each.
        let mask = present
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .fold(0, |m, (i, _)| m | 1 << i);
        let vtable = *vt.field_values[mask].get_or_insert_with(|| {
            let mut slots = [0u16; 5];
            let mut at = 4;
            for (i, p) in present.iter().enumerate() {
                if p.is_some() {
                    slots[i] = at;
                    at += 4;
                }
            }
            let last = present
                .iter()
                .rposition(Option::is_some)
                .map_or(0, |i| i + 1);
            out.vtable(at, &slots[..last])
        });
        for target in present.iter().rev().flatten() {
            out.offset(*target);
        }
        let values = out.table(vtable);

        let data_source = Self::shared(out, shared, &mut self.data_source, row.data_source());
        let legacy_tags = Self::shared(out, shared, &mut self.legacy_tags, "");
        self.tags.clear();
        for (i, (k, v)) in row.tags().enumerate() {
            if i == self.tag_texts.len() {
                self.tag_texts.push(Default::default());
            }
            let (name_at, value_at) = &mut self.tag_texts[i];
            let name = Self::shared(out, shared, name_at, k);
            let value = Self::shared(out, shared, value_at, v);
            // Tag { name, value }
            let vtable = *vt.tag.get_or_insert_with(|| out.vtable(12, &[4, 8]));
            out.offset(value);
            out.offset(name);
            self.tags.push(out.table(vtable));
        }
        let tag_list = out.offsets(&self.tags);

        // FlatBufferRowInGroup: tag_list @4, field_values @8, tags @12,
        // data_source @16, time @20 (8-aligned: the table starts 4 past
        // a multiple of 8); no meta_cache_update_time, as the Python SDK.
        let vtable = *vt
            .row
            .get_or_insert_with(|| out.vtable(28, &[16, 12, 20, 8, 0, 4]));
        out.align(8, 8);
        out.bytes(&row.time_us().to_le_bytes());
        out.offset(data_source);
        out.offset(legacy_tags);
        out.offset(values);
        out.offset(tag_list);
        let row_table = out.table(vtable);
        let in_group = out.offsets(&[row_table]);

        // FlatBufferRowGroup: measurement_name @4, field_names @8,
        // field_types @12, rows @16.
        let vtable = *vt
            .group
            .get_or_insert_with(|| out.vtable(20, &[4, 8, 12, 16]));
        out.offset(in_group);
        out.offset(field_types);
        out.offset(field_names);
        out.offset(measurement);
        self.groups.push(out.table(vtable));
    }

    /// The finished buffer of the rows pushed since the last call; the
    /// writer is then empty again, and shares nothing with what it held.
    pub(super) fn finish(&mut self) -> Vec<u8> {
        let out = &mut self.out;
        let groups = out.offsets(&self.groups);
        // FlatBufferRows { row_groups }
        let vtable = *self.vtables.root.get_or_insert_with(|| out.vtable(8, &[4]));
        out.offset(groups);
        let root = out.table(vtable);
        // The root offset, after padding that makes the length a multiple
        // of 8 (the largest alignment inside). No file identifier: the
        // SDKs finish without one.
        out.align(4, 8);
        out.offset(root);
        let data = out.buf[out.head..].to_vec();

        out.clear();
        self.vtables = Vtables::default();
        self.shared.clear();
        self.groups.clear();
        let recent = [
            &mut self.measurement,
            &mut self.data_source,
            &mut self.legacy_tags,
        ];
        recent
            .into_iter()
            .chain(&mut self.field_names)
            .chain(self.tag_texts.iter_mut().flat_map(|(k, v)| [k, v]))
            .for_each(|r| r.at = None);
        data
    }
}
