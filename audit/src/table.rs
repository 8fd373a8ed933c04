//! `votes.parquet`: one row per counted vote, in tree order (partition, offset), written and
//! read with the `parquet` crate's low-level column API (no Arrow), in row groups of at most
//! [`ROW_GROUP_ROWS`] rows so that neither side holds more than one row group in memory.
//!
//! | column           | Parquet type                 | holds                                  |
//! |------------------|------------------------------|----------------------------------------|
//! | `pseudonym`      | FIXED_LEN_BYTE_ARRAY(16)     | the voter's pseudonym in this election |
//! | `option`         | BYTE_ARRAY (UTF8)            | the option id voted for                |
//! | `partition`      | INT32                        | Kafka partition of the vote record     |
//! | `offset`         | INT64                        | Kafka offset of the vote record        |
//! | `received_at_ms` | INT64                        | the minute the appliance received it   |
//! | `nonce`          | FIXED_LEN_BYTE_ARRAY(16)     | the record's random nonce              |
//! | `leaf_hash`      | FIXED_LEN_BYTE_ARRAY(32)     | the receipt: SHA-256(0x00 ‖ leaf)       |
//!
//! Every column is `required`. The file is deterministic for a given list of rows: exporting
//! the same election twice gives the same bytes. `received_at_ms` is floored to the minute
//! ([`RECEIVED_AT_RESOLUTION_MS`]) when written: a millisecond time next to an offset would let
//! anyone who knows when a voter voted find the voter's row (docs/auditors.md, privacy).
//!
//! Every column is stored uncompressed: 64 of a row's 65-odd bytes are random (pseudonym, nonce,
//! leaf hash) and the rest is dictionary- or delta-encoded already, so a codec would save
//! little, and a compressed page makes its reader allocate the page's announced uncompressed
//! size, which nothing in the file bounds.
//!
//! The reader takes hostile files: it allocates only from sizes the file's own length bounds
//! ([`MIN_ROW_BYTES`] per row, at most [`ROW_GROUP_ROWS`] rows per row group, no page announcing
//! more values than its row group has rows, no compressed column) and answers every malformed
//! input with a [`TableError`] naming the row group, row or column.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, Encoding, Type as Physical};
use parquet::column::page::{Page, PageMetadata, PageReader};
use parquet::column::reader::ColumnReaderImpl;
use parquet::data_type::{
    ByteArray, ByteArrayType, DataType, FixedLenByteArray, FixedLenByteArrayType, Int32Type,
    Int64Type,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, FileReader, RowGroupReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;

/// Rows per row group: ~6.5 MiB of values, whatever the election's size. The reader refuses
/// larger row groups: they were not written by an exporter.
pub const ROW_GROUP_ROWS: usize = 65_536;

/// The bytes every row takes in any file an exporter writes: its pseudonym, nonce and leaf hash
/// are random (incompressible, stored plain and uncompressed). A footer announcing more rows
/// than `file bytes / MIN_ROW_BYTES` lies, and the reader refuses it before reading a row.
pub const MIN_ROW_BYTES: u64 = 16 + 16 + 32;

/// `received_at_ms` is written floored to a multiple of this (one minute).
pub const RECEIVED_AT_RESOLUTION_MS: u64 = 60_000;

/// Why a votes file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a readable Parquet file: {0}")]
    Parquet(#[from] ParquetError),
    /// The file parses but is not what an exporter writes; the text says where and why.
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = TableError> = std::result::Result<T, E>;

fn invalid(what: impl Into<String>) -> TableError {
    TableError::Invalid(what.into())
}

pub const SCHEMA: &str = "message votes {
  required fixed_len_byte_array(16) pseudonym;
  required binary option (UTF8);
  required int32 partition;
  required int64 offset;
  required int64 received_at_ms;
  required fixed_len_byte_array(16) nonce;
  required fixed_len_byte_array(32) leaf_hash;
}";

/// (name, physical type, fixed length) of each column, in file order.
const COLUMNS: [(&str, Physical, i32); 7] = [
    ("pseudonym", Physical::FIXED_LEN_BYTE_ARRAY, 16),
    ("option", Physical::BYTE_ARRAY, -1),
    ("partition", Physical::INT32, -1),
    ("offset", Physical::INT64, -1),
    ("received_at_ms", Physical::INT64, -1),
    ("nonce", Physical::FIXED_LEN_BYTE_ARRAY, 16),
    ("leaf_hash", Physical::FIXED_LEN_BYTE_ARRAY, 32),
];

/// One counted vote as a row of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub pseudonym: [u8; 16],
    pub option: String,
    pub partition: u32,
    pub offset: u64,
    pub received_at_ms: u64,
    pub nonce: [u8; 16],
    pub leaf_hash: [u8; 32],
}

/// A row to write, borrowed from wherever the vote is.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub pseudonym: &'a [u8; 16],
    pub option: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub received_at_ms: u64,
    pub nonce: &'a [u8; 16],
    pub leaf_hash: &'a [u8; 32],
}

fn properties(election: &str) -> WriterProperties {
    let random = ["pseudonym", "nonce", "leaf_hash"];
    let increasing = ["offset", "received_at_ms"];
    let mut b = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("votes {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![
            KeyValue::new("votes.election".to_owned(), election.to_owned()),
            KeyValue::new("votes.order".to_owned(), "partition, offset".to_owned()),
        ]))
        .set_sorting_columns(Some(vec![
            SortingColumn {
                column_idx: 2,
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: 3,
                descending: false,
                nulls_first: false,
            },
        ]));
    for c in random {
        // Hashes and random bytes: a dictionary or min/max would only cost.
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_statistics_enabled(ColumnPath::from(c), EnabledStatistics::None);
    }
    for c in increasing {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
    }
    b.build()
}

/// Column buffers of the row group being filled.
#[derive(Default)]
struct Columns {
    pseudonym: Vec<u8>,
    option: Vec<ByteArray>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    received_at_ms: Vec<i64>,
    nonce: Vec<u8>,
    leaf_hash: Vec<u8>,
}

impl Columns {
    fn len(&self) -> usize {
        self.partition.len()
    }

    fn clear(&mut self) {
        self.pseudonym.clear();
        self.option.clear();
        self.partition.clear();
        self.offset.clear();
        self.received_at_ms.clear();
        self.nonce.clear();
        self.leaf_hash.clear();
    }
}

/// Cuts `bytes` into `width`-byte values sharing one buffer.
fn fixed(bytes: &[u8], width: usize) -> Vec<FixedLenByteArray> {
    let all = ByteArray::from(bytes.to_vec());
    (0..bytes.len() / width)
        .map(|i| FixedLenByteArray::from(all.slice(i * width, width)))
        .collect()
}

/// Streams rows into a Parquet file, one row group per [`ROW_GROUP_ROWS`] rows.
pub struct VotesWriter<W: Write + Send> {
    file: SerializedFileWriter<W>,
    buf: Columns,
    /// One shared buffer per option id.
    options: HashMap<String, ByteArray>,
    rows: u64,
}

impl<W: Write + Send> VotesWriter<W> {
    pub fn new(out: W, election: &str) -> Result<Self> {
        let schema = Arc::new(parse_message_type(SCHEMA).expect("the schema parses"));
        let file = SerializedFileWriter::new(out, schema, Arc::new(properties(election)))?;
        Ok(Self {
            file,
            buf: Columns::default(),
            options: HashMap::new(),
            rows: 0,
        })
    }

    /// Appends one row; writes a row group when the buffer is full.
    ///
    /// # Errors
    /// When the partition or an offset does not fit Parquet's signed integers, or on I/O.
    pub fn push(&mut self, r: RowRef<'_>) -> Result<()> {
        let b = &mut self.buf;
        b.pseudonym.extend_from_slice(r.pseudonym);
        let option = match self.options.get(r.option) {
            Some(v) => v.clone(),
            None => {
                let v = ByteArray::from(r.option.as_bytes().to_vec());
                self.options.insert(r.option.to_owned(), v.clone());
                v
            }
        };
        b.option.push(option);
        b.partition
            .push(i32::try_from(r.partition).map_err(|_| invalid("partition beyond INT32"))?);
        b.offset
            .push(i64::try_from(r.offset).map_err(|_| invalid("offset beyond INT64"))?);
        let minute = r.received_at_ms - r.received_at_ms % RECEIVED_AT_RESOLUTION_MS;
        b.received_at_ms
            .push(i64::try_from(minute).map_err(|_| invalid("received_at_ms beyond INT64"))?);
        b.nonce.extend_from_slice(r.nonce);
        b.leaf_hash.extend_from_slice(r.leaf_hash);
        self.rows += 1;
        if b.len() >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// [`VotesWriter::push`] of an owned row.
    pub fn push_row(&mut self, r: &Row) -> Result<()> {
        self.push(RowRef {
            pseudonym: &r.pseudonym,
            option: &r.option,
            partition: r.partition,
            offset: r.offset,
            received_at_ms: r.received_at_ms,
            nonce: &r.nonce,
            leaf_hash: &r.leaf_hash,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.len() == 0 {
            return Ok(());
        }
        let b = &self.buf;
        let mut rg = self.file.next_row_group()?;
        let mut i = 0;
        while let Some(mut col) = rg.next_column()? {
            match i {
                0 => col.typed::<FixedLenByteArrayType>().write_batch(
                    &fixed(&b.pseudonym, 16),
                    None,
                    None,
                )?,
                1 => col
                    .typed::<ByteArrayType>()
                    .write_batch(&b.option, None, None)?,
                2 => col
                    .typed::<Int32Type>()
                    .write_batch(&b.partition, None, None)?,
                3 => col
                    .typed::<Int64Type>()
                    .write_batch(&b.offset, None, None)?,
                4 => col
                    .typed::<Int64Type>()
                    .write_batch(&b.received_at_ms, None, None)?,
                5 => col.typed::<FixedLenByteArrayType>().write_batch(
                    &fixed(&b.nonce, 16),
                    None,
                    None,
                )?,
                6 => col.typed::<FixedLenByteArrayType>().write_batch(
                    &fixed(&b.leaf_hash, 32),
                    None,
                    None,
                )?,
                _ => unreachable!("the schema has 7 columns"),
            };
            col.close()?;
            i += 1;
        }
        rg.close()?;
        self.buf.clear();
        Ok(())
    }

    /// Writes the last row group and the footer; returns the sink and the row count.
    pub fn finish(mut self) -> Result<(W, u64)> {
        self.flush()?;
        let rows = self.rows;
        // Writes the footer, flushes, and hands the sink back.
        Ok((self.file.into_inner()?, rows))
    }
}

/// Reads the rows of a votes file, one row group at a time.
pub struct VotesReader<R: ChunkReader + 'static = File> {
    file: SerializedFileReader<R>,
}

impl VotesReader<File> {
    /// Opens `path`; see [`VotesReader::new`].
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path)?;
        Self::new(f)
    }
}

impl VotesReader<Bytes> {
    /// Reads a file held in memory (the fuzz target's way in); see [`VotesReader::new`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::new(Bytes::from(bytes))
    }
}

impl<R: ChunkReader + 'static> VotesReader<R> {
    /// Reads the footer and checks, before any row is read, that the schema is exactly
    /// [`SCHEMA`], that every row group holds at most [`ROW_GROUP_ROWS`] rows and that the row
    /// groups add up to the footer's row count, which the file's length must be able to hold.
    pub fn new(source: R) -> Result<Self> {
        let len = source.len();
        let file = SerializedFileReader::new(source)?;
        let schema = file.metadata().file_metadata().schema_descr();
        let got: Vec<String> = schema
            .columns()
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {}/{}",
                    c.name(),
                    c.physical_type(),
                    c.type_length(),
                    c.max_def_level(),
                    c.max_rep_level()
                )
            })
            .collect();
        let want: Vec<String> = COLUMNS
            .iter()
            .map(|(name, ty, len)| {
                let len = if *ty == Physical::FIXED_LEN_BYTE_ARRAY {
                    *len
                } else {
                    // parquet reports -1 for types without a fixed length.
                    -1
                };
                format!("{name} {ty} {len} 0/0")
            })
            .collect();
        if got != want {
            return Err(invalid(format!(
                "not the columns of a votes export: found [{}], expected [{}]",
                got.join(", "),
                want.join(", ")
            )));
        }
        let mut sum = 0u64;
        for (i, rg) in file.metadata().row_groups().iter().enumerate() {
            let n = rg.num_rows();
            if !(0..=ROW_GROUP_ROWS as i64).contains(&n) {
                return Err(invalid(format!(
                    "row group {i} announces {n} rows (an exporter writes at most {ROW_GROUP_ROWS})"
                )));
            }
            for c in rg.columns() {
                if c.compression() != Compression::UNCOMPRESSED {
                    return Err(invalid(format!(
                        "row group {i}, column {}: compressed with {} (an exporter writes every column uncompressed)",
                        c.column_path(),
                        c.compression()
                    )));
                }
                let size = c.compressed_size();
                if !(0..=len as i64).contains(&size) {
                    return Err(invalid(format!(
                        "row group {i}, column {}: {size} bytes in a file of {len}",
                        c.column_path()
                    )));
                }
            }
            sum += n as u64;
        }
        let announced = file.metadata().file_metadata().num_rows();
        let rows = u64::try_from(announced)
            .map_err(|_| invalid(format!("the footer announces {announced} rows")))?;
        if rows > len / MIN_ROW_BYTES {
            return Err(invalid(format!(
                "the footer announces {rows} rows, more than a file of {len} bytes holds \
                 ({MIN_ROW_BYTES} bytes of random columns per row)"
            )));
        }
        if sum != rows {
            return Err(invalid(format!(
                "the row groups hold {sum} rows, the footer announces {rows}"
            )));
        }
        Ok(Self { file })
    }

    /// Rows the footer announces (checked against the row groups and the file's length).
    pub fn num_rows(&self) -> u64 {
        u64::try_from(self.file.metadata().file_metadata().num_rows()).unwrap_or(0)
    }

    pub fn num_row_groups(&self) -> usize {
        self.file.num_row_groups()
    }

    /// The rows of row group `i`, in file order.
    pub fn row_group(&self, i: usize) -> Result<Vec<Row>> {
        let rg = self.file.get_row_group(i)?;
        let n = usize::try_from(rg.metadata().num_rows())
            .ok()
            .filter(|n| *n <= ROW_GROUP_ROWS)
            .ok_or_else(|| invalid(format!("row group {i}: row count out of bounds")))?;
        let at = |what: &str| format!("row group {i}: {what}");
        let pseudonym =
            read_column::<FixedLenByteArrayType, _>(&*rg, 0, n).map_err(|e| invalid(at(&e)))?;
        let option = read_column::<ByteArrayType, _>(&*rg, 1, n).map_err(|e| invalid(at(&e)))?;
        let partition = read_column::<Int32Type, _>(&*rg, 2, n).map_err(|e| invalid(at(&e)))?;
        let offset = read_column::<Int64Type, _>(&*rg, 3, n).map_err(|e| invalid(at(&e)))?;
        let received_at_ms =
            read_column::<Int64Type, _>(&*rg, 4, n).map_err(|e| invalid(at(&e)))?;
        let nonce =
            read_column::<FixedLenByteArrayType, _>(&*rg, 5, n).map_err(|e| invalid(at(&e)))?;
        let leaf_hash =
            read_column::<FixedLenByteArrayType, _>(&*rg, 6, n).map_err(|e| invalid(at(&e)))?;
        let mut rows = Vec::with_capacity(n);
        for k in 0..n {
            let at = |what: &str| invalid(format!("row group {i}, row {k}: {what}"));
            rows.push(Row {
                pseudonym: array(pseudonym[k].data()).ok_or_else(|| at("pseudonym"))?,
                option: option[k]
                    .as_utf8()
                    .map_err(|_| at("option is not UTF-8"))?
                    .to_owned(),
                partition: u32::try_from(partition[k]).map_err(|_| at("negative partition"))?,
                offset: u64::try_from(offset[k]).map_err(|_| at("negative offset"))?,
                received_at_ms: u64::try_from(received_at_ms[k])
                    .map_err(|_| at("negative received_at_ms"))?,
                nonce: array(nonce[k].data()).ok_or_else(|| at("nonce"))?,
                leaf_hash: array(leaf_hash[k].data()).ok_or_else(|| at("leaf_hash"))?,
            });
        }
        Ok(rows)
    }
}

fn array<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// Every value of column `c` of a row group of `n` rows (all columns are required: no levels).
fn read_column<T: DataType, G: RowGroupReader + ?Sized>(
    rg: &G,
    c: usize,
    n: usize,
) -> std::result::Result<Vec<T::T>, String> {
    let name = COLUMNS[c].0;
    let pages = rg
        .get_column_page_reader(c)
        .map_err(|e| format!("column {name}: {e}"))?;
    let pages = BoundedPages {
        inner: pages,
        column: name,
        rows: n,
    };
    let mut reader: ColumnReaderImpl<T> =
        ColumnReaderImpl::new(rg.metadata().column(c).column_descr_ptr(), Box::new(pages));
    let mut values = Vec::with_capacity(n);
    loop {
        let want = n.saturating_sub(values.len()).max(1);
        let (records, _, _) = reader
            .read_records(want, None, None, &mut values)
            .map_err(|e| format!("column {name}: {e}"))?;
        if records == 0 || values.len() > n {
            break;
        }
    }
    if values.len() != n {
        return Err(format!(
            "column {name} holds {} values in a row group of {n} rows",
            values.len()
        ));
    }
    Ok(values)
}

/// The pages of one column chunk, each refused before its values are decoded when it announces
/// more values than the row group has rows: the decoders size their buffers from a page's
/// announced count (a dictionary page is resized to it), which the file's length does not bound.
struct BoundedPages {
    inner: Box<dyn PageReader>,
    column: &'static str,
    rows: usize,
}

impl BoundedPages {
    fn check(&self, page: Page) -> parquet::errors::Result<Page> {
        let announced = match &page {
            Page::DataPage { num_values, .. }
            | Page::DataPageV2 { num_values, .. }
            | Page::DictionaryPage { num_values, .. } => *num_values,
        };
        if usize::try_from(announced).map_or(true, |v| v > self.rows) {
            return Err(ParquetError::General(format!(
                "a {:?} page of column {} announces {announced} values in a row group of {} rows",
                page.page_type(),
                self.column,
                self.rows
            )));
        }
        Ok(page)
    }
}

impl Iterator for BoundedPages {
    type Item = parquet::errors::Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

impl PageReader for BoundedPages {
    fn get_next_page(&mut self) -> parquet::errors::Result<Option<Page>> {
        self.inner
            .get_next_page()?
            .map(|p| self.check(p))
            .transpose()
    }

    fn peek_next_page(&mut self) -> parquet::errors::Result<Option<PageMetadata>> {
        self.inner.peek_next_page()
    }

    fn skip_next_page(&mut self) -> parquet::errors::Result<()> {
        self.inner.skip_next_page()
    }
}

/// `file` with its footer rewritten so that each row group announces `row_group_rows` rows
/// (the footer's total is their sum). How tests make hostile footers.
#[cfg(test)]
pub(crate) fn refooter(file: &[u8], row_group_rows: i64) -> Vec<u8> {
    refooter_with(file, |rg| rg.set_num_rows(row_group_rows))
}

/// `file` with a footer claiming every column chunk is compressed with `codec`.
#[cfg(test)]
pub(crate) fn claim_compression(file: &[u8], codec: Compression) -> Vec<u8> {
    refooter_with(file, |rg| {
        let rg = rg.build().unwrap();
        let columns = rg
            .columns()
            .iter()
            .map(|c| {
                c.clone()
                    .into_builder()
                    .set_compression(codec)
                    .build()
                    .unwrap()
            })
            .collect();
        rg.into_builder().set_column_metadata(columns)
    })
}

/// `file` with each row group's metadata passed through `rewrite` (the footer's total is the
/// sum of the row groups' rows).
#[cfg(test)]
pub(crate) fn refooter_with(
    file: &[u8],
    rewrite: impl Fn(
        parquet::file::metadata::RowGroupMetaDataBuilder,
    ) -> parquet::file::metadata::RowGroupMetaDataBuilder,
) -> Vec<u8> {
    use parquet::file::metadata::{FileMetaData, ParquetMetaData, ParquetMetaDataWriter};
    let reader = SerializedFileReader::new(Bytes::from(file.to_vec())).unwrap();
    let meta = reader.metadata();
    let groups: Vec<_> = meta
        .row_groups()
        .iter()
        .map(|rg| rewrite(rg.clone().into_builder()).build().unwrap())
        .collect();
    let fm = meta.file_metadata();
    let fm = FileMetaData::new(
        fm.version(),
        groups.iter().map(|g| g.num_rows()).sum(),
        fm.created_by().map(str::to_owned),
        fm.key_value_metadata().cloned(),
        fm.schema_descr_ptr(),
        fm.column_orders().cloned(),
    );
    let footer_len = u32::from_le_bytes(file[file.len() - 8..file.len() - 4].try_into().unwrap());
    let mut out = file[..file.len() - 8 - footer_len as usize].to_vec();
    ParquetMetaDataWriter::new(&mut out, &ParquetMetaData::new(fm, groups))
        .finish()
        .unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u64) -> Row {
        let b = i.to_be_bytes();
        let mut pseudonym = [0u8; 16];
        pseudonym[..8].copy_from_slice(&b);
        let mut nonce = [0xaa; 16];
        nonce[8..].copy_from_slice(&b);
        let mut leaf_hash = [0x55; 32];
        leaf_hash[24..].copy_from_slice(&b);
        Row {
            pseudonym,
            option: ["red", "green", "blue"][(i % 3) as usize].to_owned(),
            partition: (i / 50_000) as u32,
            offset: i % 50_000 * 2,
            received_at_ms: (28_333_333 + i) * RECEIVED_AT_RESOLUTION_MS,
            nonce,
            leaf_hash,
        }
    }

    #[test]
    fn rows_round_trip_across_row_groups() {
        let dir = std::env::temp_dir().join(format!("votes-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("votes.parquet");
        let n = ROW_GROUP_ROWS as u64 * 2 + 17;
        let mut w = VotesWriter::new(File::create(&path).unwrap(), "e").unwrap();
        for i in 0..n {
            w.push_row(&row(i)).unwrap();
        }
        let (_, rows) = w.finish().unwrap();
        assert_eq!(rows, n);
        let r = VotesReader::open(&path).unwrap();
        assert_eq!(r.num_rows(), n);
        assert_eq!(r.num_row_groups(), 3);
        let mut i = 0;
        for g in 0..r.num_row_groups() {
            for got in r.row_group(g).unwrap() {
                assert_eq!(got, row(i));
                i += 1;
            }
        }
        assert_eq!(i, n);
        // The same rows give the same bytes.
        let again = dir.join("again.parquet");
        let mut w = VotesWriter::new(File::create(&again).unwrap(), "e").unwrap();
        for i in 0..n {
            w.push_row(&row(i)).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn times_are_written_to_the_minute_only() {
        let mut out = Vec::new();
        let mut w = VotesWriter::new(&mut out, "e").unwrap();
        let mut r = row(1);
        r.received_at_ms = 1_700_000_059_999;
        w.push_row(&r).unwrap();
        w.finish().unwrap();
        let got = VotesReader::from_bytes(out).unwrap().row_group(0).unwrap();
        assert_eq!(got[0].received_at_ms, 1_700_000_040_000);
    }

    fn ten_rows() -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = VotesWriter::new(&mut out, "e").unwrap();
        for i in 0..10 {
            w.push_row(&row(i)).unwrap();
        }
        w.finish().unwrap();
        out
    }

    fn refused(bytes: Vec<u8>) -> String {
        match VotesReader::from_bytes(bytes) {
            Err(e) => e.to_string(),
            Ok(r) => match (0..r.num_row_groups()).try_for_each(|g| r.row_group(g).map(drop)) {
                Err(e) => e.to_string(),
                Ok(()) => panic!("the file was read"),
            },
        }
    }

    #[test]
    fn the_reader_itself_reads_a_rewritten_footer() {
        let file = ten_rows();
        let same = refooter(&file, 10);
        let r = VotesReader::from_bytes(same).unwrap();
        assert_eq!(r.row_group(0).unwrap().len(), 10);
    }

    #[test]
    fn a_footer_announcing_more_rows_than_the_file_holds_is_refused_before_any_row() {
        let file = ten_rows();
        let hostile = refooter(&file, 65_536);
        let len = hostile.len();
        assert_eq!(
            refused(hostile),
            format!(
                "the footer announces 65536 rows, more than a file of {len} bytes holds (64 bytes of random columns per row)"
            )
        );
    }

    #[test]
    fn a_row_group_larger_than_an_exporter_writes_is_refused() {
        let e = refused(refooter(&ten_rows(), 1 << 30));
        assert_eq!(
            e,
            "row group 0 announces 1073741824 rows (an exporter writes at most 65536)"
        );
        let e = refused(refooter(&ten_rows(), -5));
        assert_eq!(
            e,
            "row group 0 announces -5 rows (an exporter writes at most 65536)"
        );
        // A row group announcing fewer rows than its columns hold.
        let e = refused(refooter(&ten_rows(), 9));
        assert!(e.contains("values in a row group of 9 rows"), "{e}");
    }

    #[test]
    fn a_compressed_column_is_refused_before_any_page_is_read() {
        // A codec makes the page reader allocate the page's announced uncompressed size.
        let hostile = claim_compression(&ten_rows(), Compression::SNAPPY);
        assert_eq!(
            refused(hostile),
            "row group 0, column \"pseudonym\": compressed with SNAPPY (an exporter writes every column uncompressed)"
        );
    }

    /// Pages as a hostile file's headers announce them.
    struct AnnouncedPages(Vec<Page>);

    impl Iterator for AnnouncedPages {
        type Item = parquet::errors::Result<Page>;
        fn next(&mut self) -> Option<Self::Item> {
            self.get_next_page().transpose()
        }
    }

    impl PageReader for AnnouncedPages {
        fn get_next_page(&mut self) -> parquet::errors::Result<Option<Page>> {
            Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
        }
        fn peek_next_page(&mut self) -> parquet::errors::Result<Option<PageMetadata>> {
            Ok(None)
        }
        fn skip_next_page(&mut self) -> parquet::errors::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_page_announcing_more_values_than_its_row_group_has_rows_is_refused_undecoded() {
        // parquet resizes its dictionary to the announced count before reading a value: 2^32-1
        // byte arrays would be 128 GiB from a 4-byte field.
        let dictionary = Page::DictionaryPage {
            buf: Bytes::from_static(b"\x03\0\0\0red"),
            num_values: u32::MAX,
            encoding: Encoding::PLAIN,
            is_sorted: false,
        };
        let mut pages = BoundedPages {
            inner: Box::new(AnnouncedPages(vec![dictionary])),
            column: "option",
            rows: 10,
        };
        let e = pages.get_next_page().unwrap_err().to_string();
        assert!(
            e.ends_with(
                "a DICTIONARY_PAGE page of column option announces 4294967295 values in a row group of 10 rows"
            ),
            "{e}"
        );
        let honest = Page::DictionaryPage {
            buf: Bytes::from_static(b"\x03\0\0\0red"),
            num_values: 1,
            encoding: Encoding::PLAIN,
            is_sorted: false,
        };
        let mut pages = BoundedPages {
            inner: Box::new(AnnouncedPages(vec![honest])),
            column: "option",
            rows: 10,
        };
        assert!(pages.get_next_page().unwrap().is_some());
        assert!(pages.get_next_page().unwrap().is_none());
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let file = ten_rows();
        for cut in [0, 4, file.len() / 2, file.len() - 1] {
            let e = refused(file[..cut].to_vec());
            assert!(
                e.starts_with("not a readable Parquet file"),
                "cut at {cut}: {e}"
            );
        }
        // The footer intact, a data page damaged.
        let mut damaged = file.clone();
        damaged[4..40].fill(0xff);
        let e = refused(damaged);
        assert!(e.contains("row group 0"), "{e}");
    }

    #[test]
    fn an_empty_file_has_no_row_group() {
        let mut out = Vec::new();
        let (_, rows) = VotesWriter::new(&mut out, "e").unwrap().finish().unwrap();
        assert_eq!(rows, 0);
        assert!(out.starts_with(b"PAR1") && out.ends_with(b"PAR1"));
    }
}
