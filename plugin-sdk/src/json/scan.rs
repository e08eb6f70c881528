//! The fast path of [`find`](super::find): one pass over the payload bytes,
//! in plain loops that stay fast in a guest built for size (the `guest`
//! profile's opt-level "s", where `serde_json`'s deep generic call chains
//! are not inlined). Values off the path are only checked, with no value
//! built; only the target is converted.
//!
//! It answers only when it is sure `serde_json` would give the same answer,
//! and gives up ([`Unsure`]) on anything else: a syntax error (whose text
//! only `serde_json` can write), a `\u` escape, a key with escapes on the
//! path, a number with an exponent, a target number of 20 digits that may
//! overflow a `u64` (where `serde_json`'s own float arithmetic takes over),
//! or nesting deeper than [`MAX_DEPTH`]. The caller then asks `serde_json`.
//! What it accepts must be exactly what `serde_json` accepts; the tests in
//! `super` check the two against each other.

use super::{Found, index};

/// Nesting this scanner follows; deeper documents go to `serde_json`, whose
/// own limit (128) decides.
const MAX_DEPTH: u32 = 100;

/// Integer digits beyond which a number might overflow an `f64` in
/// `serde_json`'s arithmetic (which refuses it); with fewer, and no
/// exponent, it cannot.
const MAX_SAFE_DIGITS: usize = 300;

/// The largest significand an `f64` holds exactly.
const EXACT_SIGNIFICAND: u64 = 1 << 53;

/// From this significand on, one more digit may overflow a `u64`: the
/// scanner gives up there (`serde_json` decides) instead of checking each
/// multiplication, which wasm32 can only do through a 128-bit multiply, a
/// call to `__multi3` per digit (6 % of a threshold plugin's instructions).
const SIGNIFICAND_LIMIT: u64 = u64::MAX / 10;

/// The start of `serde_json`'s `POW10` table (the same literals): what a
/// decimal's digits are divided by. More decimals go to `serde_json`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Bytes a string holds as they are: printable ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut byte = 0x20;
    while byte < 0x80 {
        plain[byte] = byte != b'"' as usize && byte != b'\\' as usize;
        byte += 1;
    }
    plain
};

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_le_bytes([0x01; 8]);
/// `0x80` in every byte of a word.
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// Where the run of [`PLAIN`] bytes that starts at `at` ends: eight bytes
/// at a time while eight remain, then one at a time.
///
/// In a word, a byte is flagged (its high bit set in `stops`) if it is
/// below `0x20`, `"`, `\\` or `0x80` and up. The borrow tests
/// (`(w - n * ONES) & !w & HIGHS`, with `n` 1 for a byte equal to zero) may
/// also flag a byte after a true hit, never one before it, so the lowest
/// flag is the first byte that ends the run.
///
/// Byte at a time, each turn of the loop in wasm also checks the deadline,
/// and inside [`Scanner::value`] Cranelift kept the loop's values in stack
/// slots: ~20 instructions a byte.
#[inline(always)]
fn plain_run(bytes: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // Flag the bytes below `n` (at most 0x80), and those equal to `b`.
        let below = |n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word;
        let equal = |b: u8| {
            let other = word ^ (ONES * u64::from(b));
            other.wrapping_sub(ONES) & !other
        };
        let stops = (below(0x20) | equal(b'"') | equal(b'\\') | word) & HIGHS;
        if stops != 0 {
            return at + (stops.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&byte) = bytes.get(at) {
        if !PLAIN[usize::from(byte)] {
            break;
        }
        at += 1;
    }
    at
}

/// The scanner cannot tell; ask `serde_json`.
#[derive(Debug, PartialEq)]
pub(super) struct Unsure;

type Scan<T> = Result<T, Unsure>;

/// What `path` leads to in `payload`, if the scanner is sure.
pub(super) fn find<'a>(payload: &'a [u8], path: &str) -> Scan<Option<Found<'a>>> {
    let mut scanner = Scanner {
        bytes: payload,
        at: 0,
    };
    // The empty path is the whole value.
    let found = scanner.value((!path.is_empty()).then_some(path), 0)?;
    scanner.whitespace();
    if scanner.at == payload.len() {
        Ok(found)
    } else {
        Err(Unsure)
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline(always)]
    fn whitespace(&mut self) {
        // Between two tokens there is mostly nothing or one space: those
        // take no loop, whose every turn in wasm also checks the deadline.
        let is_space = |byte: Option<&u8>| matches!(byte, Some(b' ' | b'\n' | b'\r' | b'\t'));
        let mut at = self.at;
        if is_space(self.bytes.get(at)) {
            at += 1;
            while is_space(self.bytes.get(at)) {
                at += 1;
            }
        }
        self.at = at;
    }

    /// Skips whitespace and consumes `byte`, or gives up.
    #[inline(always)]
    fn expect(&mut self, byte: u8) -> Scan<()> {
        self.whitespace();
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// After a member of a container: `true` for a comma, `false` for the
    /// closing `end`.
    #[inline(always)]
    fn comma_or(&mut self, end: u8) -> Scan<bool> {
        self.whitespace();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(true)
            }
            Some(byte) if byte == end => {
                self.at += 1;
                Ok(false)
            }
            _ => Err(Unsure),
        }
    }

    /// Opens a container: `true` if it has members, `false` if it was empty
    /// (and is now closed).
    #[inline(always)]
    fn open(&mut self, depth: u32, end: u8) -> Scan<bool> {
        if depth > MAX_DEPTH {
            return Err(Unsure);
        }
        self.at += 1;
        self.whitespace();
        if self.peek() == Some(end) {
            self.at += 1;
            Ok(false)
        } else {
            Ok(true)
        }
    }

    /// A value on the path (leading whitespace allowed): `rest` is the path
    /// below it, `None` if it is the target.
    fn value(&mut self, rest: Option<&str>, depth: u32) -> Scan<Option<Found<'a>>> {
        self.whitespace();
        let Some(rest) = rest else {
            return self.target(depth).map(Some);
        };
        let (segment, below) = match rest.split_once('.') {
            Some((segment, below)) => (segment, Some(below)),
            None => (rest, None),
        };
        let mut found = None;
        match self.peek() {
            Some(b'{') => {
                let mut more = self.open(depth + 1, b'}')?;
                while more {
                    self.whitespace();
                    let (key, escaped) = self.string()?;
                    // Comparing a key with escapes needs it unescaped.
                    if escaped {
                        return Err(Unsure);
                    }
                    self.expect(b':')?;
                    if key == segment.as_bytes() {
                        // A later duplicate key wins, as in a `Value`'s map.
                        found = self.value(below, depth + 1)?;
                    } else {
                        self.skip_member(depth + 1)?;
                    }
                    more = self.comma_or(b'}')?;
                }
            }
            Some(b'[') => {
                let wanted = index(segment);
                let mut more = self.open(depth + 1, b']')?;
                let mut at = 0;
                while more {
                    if wanted == Some(at) {
                        found = self.value(below, depth + 1)?;
                    } else {
                        self.skip_member(depth + 1)?;
                    }
                    at += 1;
                    more = self.comma_or(b']')?;
                }
            }
            // A scalar has nothing inside.
            _ => self.skip(depth)?,
        }
        Ok(found)
    }

    /// The value the path leads to (after whitespace).
    fn target(&mut self, depth: u32) -> Scan<Found<'a>> {
        Ok(match self.peek().ok_or(Unsure)? {
            b'{' => {
                self.skip(depth)?;
                Found::Object
            }
            b'[' => {
                self.skip(depth)?;
                Found::Array
            }
            b'"' => match self.string()? {
                (_, true) => Found::EscapedStr,
                // Checked by `string` already; cheap for the one target.
                (text, false) => Found::Str(std::str::from_utf8(text).map_err(|_| Unsure)?),
            },
            b'-' | b'0'..=b'9' => self.number()?,
            _ => {
                let literal = self.peek();
                self.skip(depth)?;
                match literal {
                    Some(b't') => Found::Bool(true),
                    Some(b'f') => Found::Bool(false),
                    _ => Found::Null,
                }
            }
        })
    }

    /// [`Scanner::skip`], with a number or a string checked here instead
    /// of in a call: most members off the path are one or the other, and
    /// in wasm a call costs a prologue (~30 instructions).
    #[inline(always)]
    fn skip_member(&mut self, depth: u32) -> Scan<()> {
        self.whitespace();
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.skip_number().map(drop),
            _ => self.skip(depth),
        }
    }

    /// Checks one value off the path (leading whitespace allowed).
    fn skip(&mut self, depth: u32) -> Scan<()> {
        self.whitespace();
        match self.peek().ok_or(Unsure)? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.skip_number().map(drop),
            b'{' => {
                let mut more = self.open(depth + 1, b'}')?;
                while more {
                    self.whitespace();
                    self.string()?;
                    self.expect(b':')?;
                    self.skip(depth + 1)?;
                    more = self.comma_or(b'}')?;
                }
                Ok(())
            }
            b'[' => {
                let mut more = self.open(depth + 1, b']')?;
                while more {
                    self.skip(depth + 1)?;
                    more = self.comma_or(b']')?;
                }
                Ok(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => Err(Unsure),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        let end = self.at + word.len();
        if self.bytes.get(self.at..end) == Some(word) {
            self.at = end;
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// A string at its opening quote: its raw bytes between the quotes, and
    /// whether they hold escapes. Only escapes that stand for one ASCII
    /// character are followed; `\u` is left to `serde_json` (surrogates).
    // Inlined, as `skip_number`: called for every key and most values
    // (measured: 13 % fewer instructions per payload in wasm).
    #[inline(always)]
    fn string(&mut self) -> Scan<(&'a [u8], bool)> {
        let bytes = self.bytes;
        if bytes.get(self.at) != Some(&b'"') {
            return Err(Unsure);
        }
        let start = self.at + 1;
        // A local index: the compiler keeps it in a register.
        let mut at = start;
        let mut escaped = false;
        let mut ascii = true;
        loop {
            at = plain_run(bytes, at);
            match bytes.get(at) {
                Some(b'"') => break,
                Some(b'\\') => {
                    match bytes.get(at + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        _ => return Err(Unsure),
                    }
                    escaped = true;
                    at += 2;
                }
                Some(0x80..) => {
                    ascii = false;
                    at += 1;
                }
                // The end, or a control character (an error in `serde_json`).
                _ => return Err(Unsure),
            }
        }
        let text = &bytes[start..at];
        self.at = at + 1;
        if !ascii && std::str::from_utf8(text).is_err() {
            return Err(Unsure);
        }
        Ok((text, escaped))
    }

    /// Consumes a run of digits; returns how many.
    #[inline(always)]
    fn digits(&mut self) -> usize {
        let start = self.at;
        let mut at = start;
        while let Some(b'0'..=b'9') = self.bytes.get(at) {
            at += 1;
        }
        self.at = at;
        at - start
    }

    /// Checks a number's grammar as `serde_json` does (`-`, then `0` or a
    /// digit run not starting with 0, then `.` and at least one digit);
    /// returns its text. An exponent is `serde_json`'s call.
    #[inline(always)]
    fn skip_number(&mut self) -> Scan<&'a [u8]> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                // One leading zero, alone.
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(Unsure);
                }
            }
            Some(b'1'..=b'9') => {
                if self.digits() > MAX_SAFE_DIGITS {
                    return Err(Unsure);
                }
            }
            _ => return Err(Unsure),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(Unsure);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            return Err(Unsure);
        }
        Ok(&self.bytes[start..self.at])
    }

    /// The target number, converted as `serde_json`'s parser converts it,
    /// with or without its `float_roundtrip` feature: the fast path takes
    /// only a significand an `f64` holds exactly (≤ 2^53) over at most 22
    /// decimals, where one IEEE division is the correctly rounded result
    /// both ways; anything else goes to `serde_json`.
    fn number(&mut self) -> Scan<Found<'a>> {
        let text = self.skip_number()?;
        let (negative, digits) = match text.split_first() {
            Some((b'-', digits)) => (true, digits),
            _ => (false, text),
        };
        let mut significand: u64 = 0;
        let mut decimals = None;
        for &byte in digits {
            if byte == b'.' {
                decimals = Some(0);
                continue;
            }
            // Near a u64's end, `serde_json` switches to float arithmetic
            // of its own.
            if significand >= SIGNIFICAND_LIMIT {
                return Err(Unsure);
            }
            significand = significand * 10 + u64::from(byte - b'0');
            decimals = decimals.map(|n: usize| n + 1);
        }
        Ok(match (decimals, negative) {
            (None, false) => Found::PosInt(significand),
            (None, true) => {
                // As `serde_json`: `-0`, and values below `i64::MIN`,
                // become floats.
                let negated = (significand as i64).wrapping_neg();
                if negated >= 0 {
                    if significand > EXACT_SIGNIFICAND {
                        return Err(Unsure);
                    }
                    Found::Float(-(significand as f64))
                } else {
                    Found::NegInt(negated)
                }
            }
            (Some(decimals), _) => {
                if significand > EXACT_SIGNIFICAND {
                    return Err(Unsure);
                }
                let value = significand as f64 / POW10.get(decimals).ok_or(Unsure)?;
                Found::Float(if negative { -value } else { value })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`plain_run`] one byte at a time.
    fn plain_run_bytewise(bytes: &[u8], mut at: usize) -> usize {
        while bytes.get(at).is_some_and(|&b| PLAIN[usize::from(b)]) {
            at += 1;
        }
        at
    }

    fn check_run(bytes: &[u8], at: usize) {
        assert_eq!(
            plain_run(bytes, at),
            plain_run_bytewise(bytes, at),
            "{bytes:?} from {at}"
        );
    }

    #[test]
    fn the_word_at_a_time_run_ends_where_the_byte_at_a_time_run_does() {
        // Every byte value at every position of runs shorter and longer
        // than a word, from every start.
        for len in 0..=20 {
            for position in 0..len {
                for byte in 0..=255u8 {
                    for fill in [b'a', b'~'] {
                        let mut bytes = vec![fill; len];
                        bytes[position] = byte;
                        // A second stop further on must not hide the first.
                        if position + 3 < len {
                            bytes[position + 3] = b'"';
                        }
                        for start in 0..=len {
                            check_run(&bytes, start);
                        }
                    }
                }
            }
        }
        // Mixed words: stops, and bytes next to them for the borrows.
        let pick = [
            0x00, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, b'/', b'0', b'9', b':', 0x5b, 0x5c, 0x5d,
            0x7f, 0x80, 0xf9, 0xfa, 0xff,
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes: Vec<u8> = state
                .to_le_bytes()
                .iter()
                .chain(&(state >> 3).to_le_bytes())
                .map(|&r| match r % 4 {
                    0 => pick[usize::from(r / 4) % pick.len()],
                    1 => b'0' + r % 10,
                    _ => b'a' + r % 26,
                })
                .collect();
            for start in 0..bytes.len() {
                check_run(&bytes, start);
            }
        }
    }
}
