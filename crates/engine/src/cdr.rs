//! Offline charging: CDR files from a switch, rated and charged like real-time calls.
//! Each row is its own command: a bad row is reported with its line number and
//! reason while the good rows are charged, and a call id already charged is skipped.

use crate::calls::{charge_offline, AuthorizeRequest};
use crate::{Command, Effects, Engine, Outcome};
use commcredits_core::phone::E164;
use commcredits_core::{err, Error, ErrorCode, Result, Timestamp};
use commcredits_store::Tx;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;

pub const CDR_HEADER: [&str; 7] = ["call_id", "type", "user", "from", "to", "start_time", "duration_seconds"];

/// Rows per transaction: one durable commit per batch.
pub const IMPORT_BATCH: usize = 1_000;

/// Rejected rows an [`ImportReport`] lists (the first ones, by line). A file of bad
/// lines would otherwise make an answer, and the memory behind it, many times the
/// size of the file; the counts cover every row, and a caller that wants them all
/// (the CLI's `--rejects FILE`) receives each one as it comes.
pub const MAX_REPORTED_REJECTS: usize = 1_000;

/// Characters of a CDR field: longer is a broken row (no id, number or type is near it),
/// and it is refused without being echoed.
pub const MAX_CDR_FIELD_CHARS: usize = 256;

/// Characters of a rejected row's message and call id as reported.
const MAX_PROBLEM_CHARS: usize = 300;

#[derive(Clone, Debug)]
pub struct CdrRecord {
    pub org: String,
    pub line: u64,
    pub call_id: String,
    pub call_type: String,
    pub user: Option<String>,
    pub from: String,
    pub to: String,
    pub start_time: Timestamp,
    pub duration_seconds: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RowProblem {
    pub line: u64,
    pub call_id: String,
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ImportReport {
    pub rows: usize,
    pub charged: usize,
    pub duplicates: usize,
    /// Total charged to credits by this import, minor units.
    pub charge: i64,
    /// The first [`MAX_REPORTED_REJECTS`] rejected rows, by line.
    pub rejected: Vec<RowProblem>,
    /// Every rejected row, listed or not.
    pub rejected_total: usize,
    /// Rejected rows per error code.
    pub rejected_by_code: BTreeMap<String, usize>,
}

impl ImportReport {
    /// Counts a rejected row, and lists it while the list has room.
    fn reject(&mut self, problem: RowProblem) {
        self.rejected_total += 1;
        *self.rejected_by_code.entry(problem.code.clone()).or_default() += 1;
        if self.rejected.len() < MAX_REPORTED_REJECTS {
            self.rejected.push(problem);
        }
    }
}

/// `text` cut to at most `max` characters (marked with '…' when cut).
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

impl RowProblem {
    fn new(line: u64, call_id: &str, code: ErrorCode, message: &str) -> RowProblem {
        RowProblem {
            line,
            call_id: clip(call_id, MAX_PROBLEM_CHARS),
            code: code.as_str().into(),
            message: clip(message, MAX_PROBLEM_CHARS),
        }
    }
}

fn parse_record(org: &str, rec: &csv::StringRecord, line: u64) -> Result<CdrRecord> {
    if rec.len() != CDR_HEADER.len() {
        return Err(err!(ErrorCode::InvalidCdr, "expected {} fields, found {}", CDR_HEADER.len(), rec.len()));
    }
    for (name, field) in CDR_HEADER.iter().zip(rec.iter()) {
        if field.chars().count() > MAX_CDR_FIELD_CHARS {
            return Err(err!(ErrorCode::InvalidCdr, "{name} is longer than {MAX_CDR_FIELD_CHARS} characters"));
        }
        if field.chars().any(char::is_control) {
            return Err(err!(ErrorCode::InvalidCdr, "{name} holds a control character"));
        }
    }
    let start_time: Timestamp = rec[5].parse().map_err(|_| {
        err!(ErrorCode::InvalidTime, "start_time '{}' is not an RFC 3339 time such as 2026-11-02T09:15:00Z", &rec[5])
    })?;
    let duration_seconds: u32 = rec[6]
        .parse()
        .map_err(|_| err!(ErrorCode::InvalidCdr, "duration_seconds '{}' is not a whole number of seconds", &rec[6]))?;
    if duration_seconds > crate::calls::MAX_REQUESTED_SECONDS {
        return Err(err!(ErrorCode::InvalidCdr, "duration_seconds {duration_seconds} exceeds 24 hours"));
    }
    let user = Some(rec[2].trim().to_string()).filter(|u| !u.is_empty());
    Ok(CdrRecord {
        org: org.into(),
        line,
        call_id: rec[0].trim().into(),
        call_type: rec[1].trim().into(),
        user,
        from: rec[3].trim().into(),
        to: rec[4].trim().into(),
        start_time,
        duration_seconds,
    })
}

pub(crate) fn import_one(
    engine: &Engine,
    tx: &mut dyn Tx,
    rec: &CdrRecord,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<Outcome> {
    // Every charged call has its reservation (imports make one too): one lookup tells.
    if tx.get_reservation(&rec.org, &rec.call_id)?.is_some() {
        return Ok(Outcome::Duplicate { call_id: rec.call_id.clone() });
    }
    if rec.start_time > now {
        return Err(err!(ErrorCode::InvalidTime, "start_time {} is in the future", rec.start_time));
    }
    let req = AuthorizeRequest {
        org: rec.org.clone(),
        call_id: rec.call_id.clone(),
        call_type: rec.call_type.clone(),
        user: rec.user.clone(),
        from: rec.from.clone(),
        to: rec.to.clone(),
        requested_seconds: Some(rec.duration_seconds.max(1)),
    };
    match charge_offline(engine, tx, &req, rec.start_time, rec.duration_seconds, now, fx)? {
        Ok(v) => Ok(Outcome::Ended(v)),
        Err(reason) => Err(Error::new(ErrorCode::CallDenied, format!("the call would be refused: {reason}"))),
    }
}

/// What the reading thread hands to the charging one: up to [`IMPORT_BATCH`] good
/// records and the rows it had to reject.
struct Chunk {
    rows: usize,
    records: Vec<CdrRecord>,
    rejected: Vec<RowProblem>,
}

impl Chunk {
    fn new() -> Chunk {
        Chunk { rows: 0, records: Vec::with_capacity(IMPORT_BATCH), rejected: Vec::new() }
    }
}

/// Batches read ahead of the charging thread.
const READ_AHEAD: usize = 2;

/// A CDR file as the import reads it, before any charging: every row counted, the
/// good ones parsed and the bad ones with their line and reason.
#[derive(Clone, Debug, Default)]
pub struct ParsedCdrs {
    pub rows: usize,
    pub records: Vec<CdrRecord>,
    pub rejected: Vec<RowProblem>,
}

/// Reads and checks a whole CDR CSV exactly as [`Engine::import_cdrs`] does, without
/// charging anything: the error is for a file that cannot be read at all (its header).
pub fn parse_cdrs(org_id: &str, input: impl Read) -> Result<ParsedCdrs> {
    let mut parsed = ParsedCdrs::default();
    read_cdrs(org_id, input, |chunk| {
        parsed.rows += chunk.rows;
        parsed.records.extend(chunk.records);
        parsed.rejected.extend(chunk.rejected);
        true
    })?;
    Ok(parsed)
}

/// The input of a CDR file, noting where each line's first byte other than a line
/// break is, so a row is reported on the line its text starts on. The CSV reader's own
/// line numbers are one short after a CRLF line end or a blank line (it counts the
/// line break before a row as the row's start).
struct LineCounter<R> {
    inner: R,
    offset: u64,
    line: u64,
    at_line_start: bool,
    after_cr: bool,
    starts: std::rc::Rc<std::cell::RefCell<std::collections::VecDeque<(u64, u64)>>>,
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut starts = self.starts.borrow_mut();
        for &b in &buf[..n] {
            match b {
                // CRLF, LF and a lone CR each end a line, as the CSV reader takes them.
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.line += 1;
                    self.at_line_start = true;
                    self.after_cr = b == b'\r';
                }
                _ => {
                    self.after_cr = false;
                    if self.at_line_start {
                        starts.push_back((self.offset, self.line));
                        self.at_line_start = false;
                    }
                }
            }
            self.offset += 1;
        }
        Ok(n)
    }
}

/// The line of the first text at or after byte `at` (the reader has read past it), and
/// forgets the lines before it: rows come in order.
fn line_at(starts: &std::cell::RefCell<std::collections::VecDeque<(u64, u64)>>, at: u64, fallback: u64) -> u64 {
    let mut starts = starts.borrow_mut();
    while starts.front().is_some_and(|&(offset, _)| offset < at) {
        starts.pop_front();
    }
    starts.front().map(|&(_, line)| line).unwrap_or(fallback)
}

/// Reads and checks the CSV, validating each row's numbers (which warms the shared
/// number cache, so charging finds them validated), and hands batches to `out`, which
/// answers false when the taker has stopped.
fn read_cdrs(org_id: &str, input: impl Read, mut out: impl FnMut(Chunk) -> bool) -> Result<()> {
    let starts = std::rc::Rc::new(std::cell::RefCell::new(std::collections::VecDeque::new()));
    let input =
        LineCounter { inner: input, offset: 0, line: 1, at_line_start: true, after_cr: false, starts: starts.clone() };
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(input);
    let header = rdr.headers().map_err(|e| err!(ErrorCode::InvalidCdr, "unreadable header: {e}"))?.clone();
    let got: Vec<&str> = header.iter().collect();
    if got != CDR_HEADER {
        return Err(err!(
            ErrorCode::InvalidCdr,
            "line 1: the header must be '{}', found '{}'",
            CDR_HEADER.join(","),
            got.join(",")
        ));
    }
    let mut chunk = Chunk::new();
    let mut record = csv::StringRecord::new();
    let mut line = 1u64;
    loop {
        let more = match rdr.read_record(&mut record) {
            Ok(more) => more,
            Err(e) if e.is_io_error() => return Err(err!(ErrorCode::InvalidCdr, "cannot read the file: {e}")),
            Err(e) => {
                // A broken row (bad quoting, invalid UTF-8) is reported and skipped.
                line = e.position().map(|p| line_at(&starts, p.byte(), p.line())).unwrap_or(line + 1);
                chunk.rows += 1;
                chunk.rejected.push(RowProblem::new(line, "", ErrorCode::InvalidCdr, &e.to_string()));
                if chunk.rejected.len() >= IMPORT_BATCH && !out(std::mem::replace(&mut chunk, Chunk::new())) {
                    return Ok(());
                }
                continue;
            }
        };
        if more {
            line = record.position().map(|p| line_at(&starts, p.byte(), p.line())).unwrap_or(line + 1);
            chunk.rows += 1;
            match parse_record(org_id, &record, line) {
                Ok(r) => {
                    // Only to warm the cache: charging reports any error with its context.
                    let _ = E164::parse(&r.from);
                    let _ = E164::parse(&r.to);
                    chunk.records.push(r)
                }
                Err(e) => chunk.rejected.push(RowProblem::new(line, record.get(0).unwrap_or(""), e.code, &e.message)),
            }
        }
        // Rejected rows count towards a chunk too: a file of bad rows is handed over
        // (and reported) a batch at a time, never held whole.
        let full = chunk.records.len() >= IMPORT_BATCH || chunk.rejected.len() >= IMPORT_BATCH;
        if (full || !more) && !out(std::mem::replace(&mut chunk, Chunk::new())) {
            // The charging side stopped (it failed): its error is the answer.
            return Ok(());
        }
        if !more {
            return Ok(());
        }
    }
}

impl Engine {
    /// Imports a CDR CSV (`call_id,type,user,from,to,start_time,duration_seconds`).
    /// `progress` is called with the number of rows done after each batch.
    ///
    /// Two threads: one reads and checks rows (and validates their numbers, the
    /// costliest part of a new row), the other charges batches of [`IMPORT_BATCH`]
    /// rows, each in one transaction through [`Engine::apply_bulk`].
    pub fn import_cdrs(
        &self,
        org_id: &str,
        input: impl Read + Send,
        now: Timestamp,
        progress: &mut dyn FnMut(usize),
    ) -> Result<ImportReport> {
        self.import_cdrs_with_rejects(org_id, input, now, progress, &mut |_| Ok(()))
    }

    /// Like [`Engine::import_cdrs`], and hands every rejected row to `on_reject` in line
    /// order as soon as its batch is done (the report lists only the first
    /// [`MAX_REPORTED_REJECTS`]). An error of `on_reject` stops the import (rows
    /// already committed stay charged; importing again skips them).
    pub fn import_cdrs_with_rejects(
        &self,
        org_id: &str,
        input: impl Read + Send,
        now: Timestamp,
        progress: &mut dyn FnMut(usize),
        on_reject: &mut dyn FnMut(&RowProblem) -> Result<()>,
    ) -> Result<ImportReport> {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(READ_AHEAD);
            let reader = scope.spawn(move || read_cdrs(org_id, input, |chunk| tx.send(chunk).is_ok()));
            let mut report = ImportReport::default();
            let mut charged = Ok(());
            for chunk in rx.iter() {
                report.rows += chunk.rows;
                let mut rejected = chunk.rejected;
                if !chunk.records.is_empty() {
                    charged = self.import_batch(chunk.records, now, &mut report, &mut rejected);
                    if charged.is_err() {
                        break;
                    }
                }
                // A chunk's lines all come after the previous chunk's: sorting each
                // chunk's rejects puts them all in line order.
                rejected.sort_by_key(|p| p.line);
                for p in rejected {
                    charged = on_reject(&p);
                    if charged.is_err() {
                        break;
                    }
                    report.reject(p);
                }
                if charged.is_err() {
                    break;
                }
                progress(report.rows);
            }
            drop(rx);
            let read = reader.join().map_err(|_| err!(ErrorCode::Internal, "the CDR reader panicked"))?;
            charged?;
            read?;
            Ok(report)
        })
    }

    fn import_batch(
        &self,
        batch: Vec<CdrRecord>,
        now: Timestamp,
        report: &mut ImportReport,
        rejected: &mut Vec<RowProblem>,
    ) -> Result<()> {
        let meta: Vec<(u64, String)> = batch.iter().map(|r| (r.line, r.call_id.clone())).collect();
        let results = self.apply_bulk(now, batch.into_iter().map(Command::ImportCdr).collect())?;
        for ((line, call_id), r) in meta.into_iter().zip(results) {
            match r {
                Ok(Outcome::Ended(v)) => {
                    report.charged += 1;
                    report.charge += v.charge;
                }
                Ok(Outcome::Duplicate { .. }) => report.duplicates += 1,
                Ok(_) => {}
                Err(e) => rejected.push(RowProblem::new(line, &call_id, e.code, &e.message)),
            }
        }
        Ok(())
    }
}
