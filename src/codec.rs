//! Byte-level helpers shared by the wire frames (`wire`), the log's command
//! encoding and the key-value snapshot (`kv`): integers and length-prefixed
//! byte strings, with a reader that turns every shortfall into an error
//! value.
//!
//! Integers are big-endian (network order, docs/PROTOCOL.md) unless an
//! [`Endian`] says otherwise: what goes to disk on its own is little-endian
//! (docs/STORAGE.md), written with `Endian::Little` and read with
//! [`Reader::with_endian`].
//!
//! A ground module: it uses nothing else of this crate, so that `kv` and
//! `wire` both build on it and the dependencies point one way
//! (`wire -> kv -> codec`, `wire -> codec`).

use std::fmt;

use byteorder::{BigEndian, ByteOrder, LittleEndian};

/// The order of an integer's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    /// Most significant byte first: the wire protocol.
    Big,
    /// Least significant byte first: the on-disk formats.
    Little,
}

impl Endian {
    fn read_u16(self, b: &[u8]) -> u16 {
        match self {
            Endian::Big => BigEndian::read_u16(b),
            Endian::Little => LittleEndian::read_u16(b),
        }
    }

    fn read_u32(self, b: &[u8]) -> u32 {
        match self {
            Endian::Big => BigEndian::read_u32(b),
            Endian::Little => LittleEndian::read_u32(b),
        }
    }

    fn read_u64(self, b: &[u8]) -> u64 {
        match self {
            Endian::Big => BigEndian::read_u64(b),
            Endian::Little => LittleEndian::read_u64(b),
        }
    }

    pub fn u16_bytes(self, v: u16) -> [u8; 2] {
        match self {
            Endian::Big => v.to_be_bytes(),
            Endian::Little => v.to_le_bytes(),
        }
    }

    pub fn u32_bytes(self, v: u32) -> [u8; 4] {
        match self {
            Endian::Big => v.to_be_bytes(),
            Endian::Little => v.to_le_bytes(),
        }
    }

    pub fn u64_bytes(self, v: u64) -> [u8; 8] {
        match self {
            Endian::Big => v.to_be_bytes(),
            Endian::Little => v.to_le_bytes(),
        }
    }

    pub fn put_u16(self, out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&self.u16_bytes(v));
    }

    pub fn put_u32(self, out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&self.u32_bytes(v));
    }

    pub fn put_u64(self, out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&self.u64_bytes(v));
    }

    /// A u32 length, then the bytes.
    pub fn put_bytes(self, out: &mut Vec<u8>, b: &[u8]) {
        self.put_u32(out, b.len() as u32);
        out.extend_from_slice(b);
    }

    /// A presence byte (0 absent, 1 present), then the bytes.
    pub fn put_opt_bytes(self, out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                put_bool(out, true);
                self.put_bytes(out, b);
            }
            None => put_bool(out, false),
        }
    }

    /// A presence byte, then a u64.
    pub fn put_opt_u64(self, out: &mut Vec<u8>, v: Option<u64>) {
        match v {
            Some(v) => {
                put_bool(out, true);
                self.put_u64(out, v);
            }
            None => put_bool(out, false),
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A field runs past the end of the body.
    Truncated {
        field: &'static str,
        need: usize,
        have: usize,
    },
    /// An enum tag with no meaning.
    BadTag { field: &'static str, tag: u64 },
    /// A string that is not UTF-8.
    BadUtf8 { field: &'static str },
    /// Bytes left over after the last field.
    Trailing { bytes: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { field, need, have } => {
                write!(
                    f,
                    "truncated field `{field}`: needs {need} bytes, {have} left"
                )
            }
            DecodeError::BadTag { field, tag } => write!(f, "unknown tag {tag} for `{field}`"),
            DecodeError::BadUtf8 { field } => write!(f, "invalid UTF-8 in `{field}`"),
            DecodeError::Trailing { bytes } => {
                write!(f, "{bytes} trailing bytes after the last field")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads fields from a byte slice; never panics, never allocates more than
/// the bytes present justify.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    endian: Endian,
}

impl<'a> Reader<'a> {
    /// A reader of big-endian integers (the wire's order).
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader::with_endian(buf, Endian::Big)
    }

    /// A reader of integers in the given order.
    pub fn with_endian(buf: &'a [u8], endian: Endian) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            endian,
        }
    }

    pub fn endian(&self) -> Endian {
        self.endian
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                field,
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Every byte not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(DecodeError::BadTag {
                field,
                tag: t as u64,
            }),
        }
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(self.endian.read_u16(b))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(self.endian.read_u32(b))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        Ok(self.endian.read_u64(b))
    }

    /// A u32 length, then that many bytes.
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }

    pub fn bytes_vec(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        Ok(self.bytes(field)?.to_vec())
    }

    /// A presence byte (0 absent, 1 present), then bytes.
    pub fn opt_bytes(&mut self, field: &'static str) -> Result<Option<Vec<u8>>, DecodeError> {
        Ok(self.opt_slice(field)?.map(<[u8]>::to_vec))
    }

    /// `opt_bytes`, borrowed.
    pub fn opt_slice(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, DecodeError> {
        if self.bool(field)? {
            Ok(Some(self.bytes(field)?))
        } else {
            Ok(None)
        }
    }

    /// A presence byte, then a u64.
    pub fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        if self.bool(field)? {
            Ok(Some(self.u64(field)?))
        } else {
            Ok(None)
        }
    }

    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| DecodeError::BadUtf8 { field })
    }

    /// A u32 count of items each at least `item_bytes_min` long, checked
    /// against the bytes left before anything is allocated.
    pub fn count(
        &mut self,
        field: &'static str,
        item_bytes_min: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        let need = n.saturating_mul(item_bytes_min.max(1));
        if need > self.remaining() {
            return Err(DecodeError::Truncated {
                field,
                need,
                have: self.remaining(),
            });
        }
        Ok(n)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            bytes => Err(DecodeError::Trailing { bytes }),
        }
    }
}

// The wire's encodings: `Endian::Big`'s, as free functions.
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
pub fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(v as u8);
}
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    Endian::Big.put_u16(out, v);
}
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    Endian::Big.put_u32(out, v);
}
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    Endian::Big.put_u64(out, v);
}
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    Endian::Big.put_bytes(out, b);
}
pub fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    Endian::Big.put_opt_bytes(out, b);
}
pub fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    Endian::Big.put_opt_u64(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_big_endian_is_network_order() {
        let mut out = Vec::new();
        put_u16(&mut out, 0x0102);
        put_u32(&mut out, 0x0304_0506);
        put_u64(&mut out, 0x0708_090a_0b0c_0d0e);
        put_bytes(&mut out, b"xy");
        assert_eq!(
            out,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 0, 0, 2, b'x', b'y']
        );
        let mut r = Reader::new(&out);
        assert_eq!(r.u16("a"), Ok(0x0102));
        assert_eq!(r.u32("b"), Ok(0x0304_0506));
        assert_eq!(r.u64("c"), Ok(0x0708_090a_0b0c_0d0e));
        assert_eq!(r.bytes("d"), Ok(&b"xy"[..]));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn codec_little_endian_round_trips_and_differs() {
        let le = Endian::Little;
        let mut out = Vec::new();
        le.put_u16(&mut out, 0x0102);
        le.put_u32(&mut out, 0x0304_0506);
        le.put_u64(&mut out, 0x0708_090a_0b0c_0d0e);
        le.put_opt_bytes(&mut out, Some(b"z"));
        le.put_opt_u64(&mut out, None);
        assert_eq!(
            out,
            [2, 1, 6, 5, 4, 3, 14, 13, 12, 11, 10, 9, 8, 7, 1, 1, 0, 0, 0, b'z', 0]
        );
        let mut r = Reader::with_endian(&out, le);
        assert_eq!(r.endian(), Endian::Little);
        assert_eq!(r.u16("a"), Ok(0x0102));
        assert_eq!(r.u32("b"), Ok(0x0304_0506));
        assert_eq!(r.u64("c"), Ok(0x0708_090a_0b0c_0d0e));
        assert_eq!(r.opt_bytes("d"), Ok(Some(b"z".to_vec())));
        assert_eq!(r.opt_u64("e"), Ok(None));
        assert_eq!(r.finish(), Ok(()));
        // Read in the other order, the same bytes are other numbers.
        assert_eq!(Reader::new(&out).u16("a"), Ok(0x0201));
    }

    #[test]
    fn codec_reader_reports_shortfalls_as_values() {
        let mut r = Reader::with_endian(&[1, 2, 3], Endian::Little);
        assert_eq!(
            r.u32("n"),
            Err(DecodeError::Truncated {
                field: "n",
                need: 4,
                have: 3
            })
        );
        let mut r = Reader::new(&[0, 0, 0, 9, 1]);
        assert_eq!(
            r.bytes("b"),
            Err(DecodeError::Truncated {
                field: "b",
                need: 9,
                have: 1
            })
        );
    }
}
