//! The big-endian, length-prefixed primitives the binary formats share (the vote record of
//! [`crate::record`], the receipt leaf of [`crate::receipt`], the forwarding frames of
//! [`crate::forward`], the group assignment of [`crate::group`] and the shard snapshot of
//! [`crate::snapshot`]): one reader and one writer, so every format bounds and rejects input the
//! same way.

use crate::ids::{ELECTION_ID_MAX, ElectionId, IdError, OPTION_ID_MAX, OptionId};

/// Why a field could not be read; each format maps it into its own error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The input ends inside the field.
    Truncated(&'static str),
    /// A length prefix above the field's bound (checked before any byte of it is read).
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A string field that is not UTF-8.
    NotText(&'static str),
    /// A string field that is not a valid id of its kind.
    InvalidId {
        field: &'static str,
        source: IdError,
    },
}

impl WireError {
    /// The field, and what is wrong with the id it was to hold (`None`: the input ended inside
    /// it): the formats that read ids report a bad field as a bad id of that kind.
    pub(crate) fn id_fault(self) -> (&'static str, Option<IdError>) {
        match self {
            WireError::Truncated(field) => (field, None),
            WireError::TooLong { field, max, .. } => {
                (field, Some(IdError::TooLong { kind: field, max }))
            }
            WireError::NotText(field) => (field, Some(IdError::BadCharacter { kind: field })),
            WireError::InvalidId { field, source } => (field, Some(source)),
        }
    }
}

/// `From<WireError>` for the error type of a format that reads ids, with its `Truncated(field)`
/// and `InvalidId { field, source }` variants: a field the input ends inside is truncated, any
/// other defect makes it a bad id of its kind ([`WireError::id_fault`]).
macro_rules! from_wire_error {
    ($error:ident) => {
        impl From<$crate::wire::WireError> for $error {
            fn from(e: $crate::wire::WireError) -> Self {
                match e.id_fault() {
                    (field, None) => $error::Truncated(field),
                    (field, Some(source)) => $error::InvalidId { field, source },
                }
            }
        }
    };
}
pub(crate) use from_wire_error;

/// Appends `s` with its length as a u16.
///
/// # Panics
/// When `s` is longer than u16::MAX: every string written is validated far below that.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("strings are validated to be short");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at `pos`.
    pub(crate) fn at(bytes: &'a [u8], pos: usize) -> Self {
        Self { bytes, pos }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated(field))?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(WireError::Truncated(field))?;
        self.pos = end;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], WireError> {
        let slice = self.take(field, N)?;
        Ok(slice.try_into().expect("take returned exactly N bytes"))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub(crate) fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, WireError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(WireError::TooLong { field, len, max });
        }
        let raw = self.take(field, len)?;
        std::str::from_utf8(raw).map_err(|_| WireError::NotText(field))
    }

    /// The `election` field: a string of at most [`ELECTION_ID_MAX`] bytes that is a valid id.
    pub(crate) fn election(&mut self) -> Result<ElectionId, WireError> {
        let s = self.str("election", ELECTION_ID_MAX)?;
        ElectionId::new(s).map_err(|source| WireError::InvalidId {
            field: "election",
            source,
        })
    }

    /// The `option` field: a string of at most [`OPTION_ID_MAX`] bytes that is a valid id.
    pub(crate) fn option(&mut self) -> Result<OptionId, WireError> {
        let s = self.str("option", OPTION_ID_MAX)?;
        OptionId::new(s).map_err(|source| WireError::InvalidId {
            field: "option",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_names_each_defect() {
        let mut out = vec![7];
        put_str(&mut out, "abc");
        out.extend_from_slice(&9u32.to_be_bytes());
        let mut r = Reader::at(&out, 1);
        assert_eq!(r.str("s", 8), Ok("abc"));
        assert_eq!(r.array::<4>("n"), Ok([0, 0, 0, 9]));
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.array::<1>("x"), Err(WireError::Truncated("x")));
        assert_eq!(
            Reader::at(&out, 1).str("s", 2),
            Err(WireError::TooLong {
                field: "s",
                len: 3,
                max: 2
            })
        );
        assert_eq!(
            Reader::at(&[0, 1, 0xff], 0).str("s", 2),
            Err(WireError::NotText("s"))
        );
        assert_eq!(
            Reader::at(&[0, 5, 1], 0).str("s", 8),
            Err(WireError::Truncated("s"))
        );
    }
}
