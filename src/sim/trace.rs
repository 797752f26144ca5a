//! The routing-trace format (JSON Lines, versioned; specified in `docs/TRACE.md`): a header line
//! with the model summary, then one line per block execution. [`TraceWriter`] writes it (the
//! engine's `run --trace-out` and the generators), [`TraceReader`] streams it one line at a time
//! so that traces larger than memory can be replayed.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The format version this crate writes and reads.
pub const TRACE_VERSION: u32 = 1;

/// The header line: what model the trace was recorded on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// Format version ([`TRACE_VERSION`]).
    pub version: u32,
    /// A free-form model name (e.g. `"mixtral-8x7b"` or a checkpoint path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Number of MoE blocks.
    pub blocks: usize,
    /// Routed experts in each block (`blocks` entries).
    pub experts_per_block: Vec<usize>,
    /// Bytes of one expert in each block (`blocks` entries).
    pub expert_bytes: Vec<u64>,
    /// Model hidden size.
    pub hidden_size: usize,
    /// Experts chosen per token (1 for RRE and Switch), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Tokens per step (the batch in decode), when constant and known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_step: Option<usize>,
}

impl TraceHeader {
    /// Checks the header's internal consistency; `Err` holds the reason.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.version != TRACE_VERSION {
            return Err(format!(
                "trace format version {} is not supported (this build reads version {TRACE_VERSION})",
                self.version
            ));
        }
        if self.experts_per_block.len() != self.blocks {
            return Err(format!(
                "experts_per_block has {} entries but blocks is {}",
                self.experts_per_block.len(),
                self.blocks
            ));
        }
        if self.expert_bytes.len() != self.blocks {
            return Err(format!(
                "expert_bytes has {} entries but blocks is {}",
                self.expert_bytes.len(),
                self.blocks
            ));
        }
        if self.experts_per_block.iter().sum::<usize>() >= u32::MAX as usize {
            return Err("more than 2^32 experts in total".into());
        }
        Ok(())
    }

    /// Bytes of all experts of all blocks (what "100%" of a budget means).
    pub fn total_expert_bytes(&self) -> u64 {
        self.experts_per_block.iter().zip(&self.expert_bytes).map(|(&n, &b)| n as u64 * b).sum()
    }

    /// The largest single expert (the slot size).
    pub fn max_expert_bytes(&self) -> u64 {
        self.expert_bytes.iter().copied().max().unwrap_or(0)
    }
}

/// One block execution: the experts a block used in one step, with their token counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// Step (decode step or prefill call), non-decreasing along the trace.
    pub step: u64,
    /// MoE block index.
    pub block: u32,
    /// `(expert, tokens)` pairs, each expert at most once, tokens ≥ 1.
    pub experts: Vec<(u32, u32)>,
}

/// Writes a trace: the header at creation, then one line per block execution.
pub struct TraceWriter<W: Write = BufWriter<File>> {
    out: W,
    header: TraceHeader,
    path: PathBuf,
}

impl TraceWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the header line.
    pub fn create(path: impl AsRef<Path>, header: &TraceHeader) -> Result<Self> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        TraceWriter::from_writer(BufWriter::new(file), header, path)
    }
}

impl<W: Write> TraceWriter<W> {
    /// A writer into any byte sink; `label` names it in errors.
    pub fn from_writer(mut out: W, header: &TraceHeader, label: impl AsRef<Path>) -> Result<Self> {
        let path = label.as_ref().to_path_buf();
        header.validate().map_err(Error::input)?;
        let line = serde_json::to_string(header).map_err(|e| Error::input(e.to_string()))?;
        writeln!(out, "{line}").map_err(|e| Error::io(&path, e))?;
        Ok(TraceWriter { out, header: header.clone(), path })
    }

    /// Appends one block execution: `experts` are `(expert, tokens)` pairs in the order the
    /// block used them. Fails on a block or expert outside the header's model.
    pub fn write_block(&mut self, step: u64, block: u32, experts: &[(u32, u32)]) -> Result<()> {
        let n = *self.header.experts_per_block.get(block as usize).ok_or_else(|| {
            Error::input(format!(
                "trace: block {block} is outside the model's {} blocks",
                self.header.blocks
            ))
        })?;
        if let Some(&(e, _)) = experts.iter().find(|(e, _)| *e as usize >= n) {
            return Err(Error::input(format!(
                "trace: expert {e} of block {block} is outside the block's {n} experts"
            )));
        }
        let mut line = String::with_capacity(40 + experts.len() * 12);
        use std::fmt::Write as _;
        let _ = write!(line, "{{\"step\":{step},\"block\":{block},\"experts\":[");
        for (i, (e, t)) in experts.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(line, "{sep}[{e},{t}]");
        }
        line.push_str("]}\n");
        self.out.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))
    }

    /// Appends a [`BlockRecord`].
    pub fn write_record(&mut self, rec: &BlockRecord) -> Result<()> {
        self.write_block(rec.step, rec.block, &rec.experts)
    }

    /// Flushes and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        Ok(self.out)
    }
}

/// Streams a trace: reads the header at open, then yields one [`BlockRecord`] per line, checked
/// against the header. Memory use is one line, whatever the file's size.
pub struct TraceReader<R: BufRead = BufReader<File>> {
    input: R,
    header: TraceHeader,
    path: PathBuf,
    line_no: usize,
    buf: String,
    last_step: u64,
    /// Per expert of the current line: was it already listed (duplicate check without hashing).
    seen: Vec<bool>,
}

impl TraceReader<BufReader<File>> {
    /// Opens `path` and reads its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(path.to_path_buf())
            } else {
                Error::io(path, e)
            }
        })?;
        TraceReader::from_reader(BufReader::with_capacity(1 << 20, file), path)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    step: u64,
    block: u32,
    experts: Vec<(u32, u32)>,
}

impl<R: BufRead> TraceReader<R> {
    /// A reader over any buffered source; `label` names it in errors.
    pub fn from_reader(mut input: R, label: impl AsRef<Path>) -> Result<Self> {
        let path = label.as_ref().to_path_buf();
        let bad = |line, reason: String| Error::BadTrace { path: path.clone(), line, reason };
        let mut buf = String::new();
        let mut line_no = 0;
        loop {
            buf.clear();
            let n = input.read_line(&mut buf).map_err(|e| Error::io(&path, e))?;
            line_no += 1;
            if n == 0 {
                return Err(bad(line_no, "empty file: no header line".into()));
            }
            if !buf.trim().is_empty() {
                break;
            }
        }
        let header: TraceHeader = serde_json::from_str(buf.trim())
            .map_err(|e| bad(line_no, format!("bad header: {e}")))?;
        header.validate().map_err(|r| bad(line_no, r))?;
        let widest = header.experts_per_block.iter().copied().max().unwrap_or(0);
        Ok(TraceReader {
            input,
            header,
            path,
            line_no,
            buf,
            last_step: 0,
            seen: vec![false; widest],
        })
    }

    /// The header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// The 1-based number of the last line read.
    pub fn line(&self) -> usize {
        self.line_no
    }

    /// Reads the next record into `rec` (reusing its allocation); `Ok(false)` at the end.
    pub fn read_into(&mut self, rec: &mut BlockRecord) -> Result<bool> {
        loop {
            self.buf.clear();
            let n = self.input.read_line(&mut self.buf).map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                return Ok(false);
            }
            self.line_no += 1;
            if !self.buf.trim().is_empty() {
                break;
            }
        }
        let raw: RawRecord = serde_json::from_str(self.buf.trim())
            .map_err(|e| self.bad(format!("not a block record: {e}")))?;
        let n = *self.header.experts_per_block.get(raw.block as usize).ok_or_else(|| {
            self.bad(format!(
                "block {} is outside the model's {} blocks",
                raw.block, self.header.blocks
            ))
        })?;
        if raw.step < self.last_step {
            return Err(self.bad(format!("step {} comes after step {}", raw.step, self.last_step)));
        }
        let mut problem = None;
        for &(e, t) in &raw.experts {
            if e as usize >= n {
                problem =
                    Some(format!("expert {e} of block {} is outside its {n} experts", raw.block));
            } else if t == 0 {
                problem =
                    Some(format!("expert {e} has 0 tokens (list only experts that were used)"));
            } else if std::mem::replace(&mut self.seen[e as usize], true) {
                problem = Some(format!("expert {e} is listed twice"));
            }
            if problem.is_some() {
                break;
            }
        }
        for &(e, _) in &raw.experts {
            if let Some(s) = self.seen.get_mut(e as usize) {
                *s = false;
            }
        }
        if let Some(p) = problem {
            return Err(self.bad(p));
        }
        self.last_step = raw.step;
        rec.step = raw.step;
        rec.block = raw.block;
        rec.experts = raw.experts;
        Ok(true)
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadTrace { path: self.path.clone(), line: self.line_no, reason }
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Result<BlockRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut rec = BlockRecord::default();
        match self.read_into(&mut rec) {
            Ok(true) => Some(Ok(rec)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}
