//! Raw blocks, as taosAdapter forwards them over WebSocket (reference §3):
//! a 28-byte header, the schema, the column lengths (little-endian on the
//! WS wire), then each column — fixed-size columns behind an MSB-first null
//! bitmap, var-size columns as `i32` offsets (`-1` = NULL) and
//! `u16 length + bytes` entries; NCHAR as UCS-4LE.

use crate::sql::{ResultSet, Type, Value};

/// Encodes a result set as one raw block.
pub fn encode(set: &ResultSet) -> Vec<u8> {
    let rows = set.rows.len();
    let cols = set.fields.len();
    let mut out = Vec::new();
    out.extend_from_slice(&1i32.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // length, patched below
    out.extend_from_slice(&(rows as i32).to_le_bytes());
    out.extend_from_slice(&(cols as i32).to_le_bytes());
    out.extend_from_slice(&0x8000_0000u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    for (_, ty) in &set.fields {
        out.push(ty.code());
        out.extend_from_slice(&(ty.bytes() as i32).to_le_bytes());
    }
    let lengths_at = out.len();
    out.resize(lengths_at + 4 * cols, 0);
    for (c, (_, ty)) in set.fields.iter().enumerate() {
        match ty.fixed_width() {
            Some(width) => {
                let bitmap = out.len();
                out.resize(bitmap + rows.div_ceil(8), 0);
                for (r, row) in set.rows.iter().enumerate() {
                    let v = &row[c];
                    if *v == Value::Null {
                        out[bitmap + (r >> 3)] |= 0x80 >> (r & 7);
                        out.resize(out.len() + width, 0);
                    } else {
                        fixed(*ty, v, &mut out);
                    }
                }
                let len = (rows * width) as u32;
                out[lengths_at + 4 * c..lengths_at + 4 * c + 4].copy_from_slice(&len.to_le_bytes());
            }
            None => {
                let offsets = out.len();
                out.resize(offsets + 4 * rows, 0);
                let data = out.len();
                for (r, row) in set.rows.iter().enumerate() {
                    let at = offsets + 4 * r;
                    match &row[c] {
                        Value::Str(s) => {
                            let offset = (out.len() - data) as i32;
                            out[at..at + 4].copy_from_slice(&offset.to_le_bytes());
                            let bytes: Vec<u8> = match ty {
                                Type::NChar(_) => {
                                    s.chars().flat_map(|ch| (ch as u32).to_le_bytes()).collect()
                                }
                                _ => s.as_bytes().to_vec(),
                            };
                            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                            out.extend_from_slice(&bytes);
                        }
                        _ => out[at..at + 4].copy_from_slice(&(-1i32).to_le_bytes()),
                    }
                }
                let len = (out.len() - data) as u32;
                out[lengths_at + 4 * c..lengths_at + 4 * c + 4].copy_from_slice(&len.to_le_bytes());
            }
        }
    }
    // Newer servers append one spare byte, counted in `length`.
    out.push(0);
    let length = out.len() as i32;
    out[4..8].copy_from_slice(&length.to_le_bytes());
    out
}

fn fixed(ty: Type, v: &Value, out: &mut Vec<u8>) {
    let int = match v {
        Value::Int(i) => *i,
        Value::Bool(b) => i64::from(*b),
        Value::Float(f) => *f as i64,
        _ => 0,
    };
    let float = match v {
        Value::Float(f) => *f,
        Value::Int(i) => *i as f64,
        _ => 0.0,
    };
    match ty {
        Type::Bool | Type::TinyInt => out.push(int as i8 as u8),
        Type::SmallInt => out.extend_from_slice(&(int as i16).to_le_bytes()),
        Type::Int => out.extend_from_slice(&(int as i32).to_le_bytes()),
        Type::BigInt | Type::Timestamp => out.extend_from_slice(&int.to_le_bytes()),
        Type::Float => out.extend_from_slice(&(float as f32).to_le_bytes()),
        Type::Double => out.extend_from_slice(&float.to_le_bytes()),
        Type::Varchar(_) | Type::NChar(_) => unreachable!("var-size"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Precision;

    #[test]
    fn the_worked_example_of_the_reference_plus_the_spare_byte() {
        let set = ResultSet {
            fields: vec![("v".into(), Type::Varchar(64))],
            rows: vec![vec![Value::Str("3.3.6.0".into())]],
            precision: Precision::Ms,
        };
        let mut expected = vec![
            1, 0, 0, 0, 51, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0,
            8, 64, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 7, 0,
        ];
        expected.extend_from_slice(b"3.3.6.0");
        expected.push(0);
        assert_eq!(encode(&set), expected);
    }

    #[test]
    fn a_null_bigint_is_flagged_msb_first_and_still_takes_its_width() {
        let set = ResultSet {
            fields: vec![("v".into(), Type::BigInt)],
            rows: vec![vec![Value::Int(7)], vec![Value::Null]],
            precision: Precision::Ms,
        };
        let block = encode(&set);
        assert_eq!(&block[33..37], &16u32.to_le_bytes());
        assert_eq!(block[37], 0x40);
        assert_eq!(&block[38..46], &7i64.to_le_bytes());
        assert_eq!(&block[46..54], &[0; 8]);
    }
}
