//! Byte-level helpers shared by the wire frames (`wire`), the log's command
//! encoding and the key-value snapshot (`kv`): big-endian integers and
//! length-prefixed byte strings, with a reader that turns every shortfall
//! into an error value.
//!
//! A ground module: it uses nothing else of this crate, so that `kv` and
//! `wire` both build on it and the dependencies point one way
//! (`wire -> kv -> codec`, `wire -> codec`).

use std::fmt;

use byteorder::{BigEndian, ByteOrder, WriteBytesExt};

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
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
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
        Ok(BigEndian::read_u16(self.take(2, field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(BigEndian::read_u32(self.take(4, field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(BigEndian::read_u64(self.take(8, field)?))
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

// Writing into a Vec<u8> cannot fail; these helpers say so once.
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
pub fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(v as u8);
}
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    let _ = out.write_u16::<BigEndian>(v);
}
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    let _ = out.write_u32::<BigEndian>(v);
}
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    let _ = out.write_u64::<BigEndian>(v);
}
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}
pub fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_bool(out, true);
            put_bytes(out, b);
        }
        None => put_bool(out, false),
    }
}
pub fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            put_bool(out, true);
            put_u64(out, v);
        }
        None => put_bool(out, false),
    }
}
