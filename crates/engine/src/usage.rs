//! The PSTN usage details report: one row per call, the original product's 20 columns
//! in their order, then ours; as JSON pages, CSV (RFC 4180, UTF-8) and an Excel
//! workbook. Both files stream from the database: memory stays flat whatever the
//! number of rows.

use crate::Engine;
use commcredits_core::catalog::Sku;
use commcredits_core::money::Currency;
use commcredits_core::phone::Country;
use commcredits_core::{err, ErrorCode, Result, Timestamp};
use commcredits_store::{CdrRow, UserRow};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;

/// The original product's columns, in its order, then ours.
pub const USAGE_HEADER: [&str; 26] = [
    "UsageId",
    "Call ID",
    "Conference ID",
    "User Location",
    "AAD ObjectId",
    "UPN",
    "User Display Name",
    "Caller ID",
    "Call Type",
    "Number Type",
    "Domestic/International",
    "Destination Dialed",
    "Destination Number",
    "Start Time",
    "End Time",
    "Duration Seconds",
    "Connection Fee",
    "Charge",
    "Currency",
    "Capability",
    "Funding",
    "Plan Minutes",
    "Charged Seconds",
    "Overrun Seconds",
    "Rate Per Minute",
    "Source",
];

/// Rows per batch handed from the thread that reads the database to the one that
/// writes the report, and batches read ahead of the writer.
const READ_BATCH: usize = 512;
const READ_AHEAD_BATCHES: usize = 2;

/// Runs `read` on a second thread while this one hands its rows to `write`, in order:
/// `read` lends each row it produces to the callback it is given, which keeps the rows
/// `keep` accepts by swapping them into a batch (leaving `read` a spent row to refill)
/// and sends full batches of [`READ_BATCH`] across, [`READ_AHEAD_BATCHES`] ahead of
/// the writer; spent batches come back for reuse, so rows are not copied.
///
/// When `write` fails, the reader stops at its next row, kept or not, and the writer's
/// error is the one returned; when `read` fails, its error is returned.
fn read_ahead<T: Clone + Send>(
    read: impl FnOnce(&mut dyn FnMut(&mut T) -> Result<()>) -> Result<()> + Send,
    keep: impl Fn(&T) -> bool + Send,
    write: &mut dyn FnMut(&T) -> Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<T>>(READ_AHEAD_BATCHES);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<T>>();
    let writer_stopped = AtomicBool::new(false);
    let stop = &writer_stopped;
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            let stopped = || err!(ErrorCode::Internal, "the report's writer stopped");
            let mut batch: Vec<T> = Vec::with_capacity(READ_BATCH);
            let mut used = 0;
            read(&mut |row| {
                if stop.load(Ordering::Relaxed) {
                    return Err(stopped());
                }
                if !keep(row) {
                    return Ok(());
                }
                match batch.get_mut(used) {
                    Some(spent) => std::mem::swap(spent, row),
                    None => batch.push(row.clone()),
                }
                used += 1;
                if used == READ_BATCH {
                    let next = empty_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(READ_BATCH));
                    full_tx.send(std::mem::replace(&mut batch, next)).map_err(|_| stopped())?;
                    used = 0;
                }
                Ok(())
            })?;
            batch.truncate(used);
            if !batch.is_empty() {
                full_tx.send(batch).map_err(|_| stopped())?;
            }
            Ok(())
        });
        let mut written = Ok(());
        for batch in full_rx.iter() {
            written = batch.iter().try_for_each(&mut *write);
            if written.is_err() {
                break;
            }
            // The reader may be gone already: then the batch is simply dropped.
            let _ = empty_tx.send(batch);
        }
        // Stops the reader if it is still going: at its next row, or at its next send.
        writer_stopped.store(true, Ordering::Relaxed);
        drop(full_rx);
        let read = reader.join().unwrap_or_else(|_| Err(err!(ErrorCode::Internal, "the report's reader panicked")));
        // The writer's own error first: when it stopped, the reader's is only that.
        written?;
        read
    })
}

/// Which calls a report covers: those that started in [from, to), narrowed by filters.
#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// A user id or UPN.
    pub user: Option<String>,
    /// Ours (`outbound`...) or the report's (`user_out`, `conf_out`, `ucap_in`).
    pub call_type: Option<String>,
    /// `plan`, `credits`, `plan_and_credits`, `emergency`.
    pub funding: Option<String>,
    /// `MCOPSTN1`, `MCOPSTN2`, `MCOMEETADD`, `MCOPSTNPP`.
    pub capability: Option<String>,
    /// Destination country (ISO 3166 alpha-2).
    pub country: Option<String>,
}

/// One call as the report shows it. Money in minor units; times as instants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub usage_id: String,
    pub call_id: String,
    pub conference_id: String,
    pub user_location: String,
    pub user_id: String,
    pub upn: String,
    pub user_display_name: String,
    pub caller_id: String,
    pub call_type: String,
    pub number_type: String,
    pub domestic_international: String,
    pub destination_dialed: String,
    pub destination_number: String,
    pub start_time: String,
    pub end_time: String,
    pub duration_seconds: i64,
    pub connection_fee: i64,
    pub charge: i64,
    pub currency: String,
    pub capability: String,
    pub funding: String,
    pub plan_minutes: i64,
    pub charged_seconds: i64,
    pub overrun_seconds: i64,
    pub rate_per_minute: String,
    pub source: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub start: Timestamp,
    #[serde(skip)]
    #[schema(ignore)]
    pub end: Timestamp,
}

/// One call as the report shows it, borrowed from the stored call and the
/// organization's users.
pub struct UsageRef<'a> {
    pub cdr: &'a CdrRow,
    pub conference_id: &'a str,
    pub user_location: &'a str,
    pub upn: &'a str,
    pub user_display_name: &'a str,
    pub call_type: &'static str,
    pub number_type: &'static str,
    pub domestic_international: &'static str,
    pub destination_dialed: &'a str,
    pub capability: &'static str,
}

impl UsageRef<'_> {
    pub fn to_row(&self) -> UsageRow {
        let c = self.cdr;
        UsageRow {
            usage_id: c.usage_id.clone(),
            call_id: c.call_id.clone(),
            conference_id: self.conference_id.into(),
            user_location: self.user_location.into(),
            user_id: c.user_id.clone().unwrap_or_default(),
            upn: self.upn.into(),
            user_display_name: self.user_display_name.into(),
            caller_id: c.from_number.clone(),
            call_type: self.call_type.into(),
            number_type: self.number_type.into(),
            domestic_international: self.domestic_international.into(),
            destination_dialed: self.destination_dialed.into(),
            destination_number: c.to_number.clone(),
            start_time: crate::views::iso(c.start_at),
            end_time: crate::views::iso(c.end_at),
            duration_seconds: c.duration_seconds,
            connection_fee: c.connection_fee_minor,
            charge: c.charge_minor,
            currency: c.currency.clone(),
            capability: self.capability.into(),
            funding: c.funding.clone(),
            plan_minutes: c.plan_minutes,
            charged_seconds: c.charged_seconds,
            overrun_seconds: c.overrun_seconds,
            rate_per_minute: c.rate_per_minute.clone().unwrap_or_default(),
            source: c.source.clone(),
            start: c.start_at,
            end: c.end_at,
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UsagePage {
    pub items: Vec<UsageRow>,
    pub next_cursor: Option<String>,
    pub currency: String,
}

/// A new export's id, as in `Calls.Export.<id>.zip`.
/// A CSV cell as a spreadsheet will not run it: text that begins with `=`, `@`, a
/// tab or a carriage return, or with `+` or `-` without being a plain number, gets a
/// leading `'` (OWASP's advice against formula injection), so that a display name such
/// as `=HYPERLINK(...)` is shown, not evaluated. Numbers stay as they are, E.164 numbers
/// (`+14255550100`) and negative amounts included. Every CSV the product writes passes
/// its cells through here.
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    let risky = match cell.as_bytes().first() {
        Some(b'=' | b'@' | b'\t' | b'\r') => true,
        Some(b'+' | b'-') => !is_plain_number(&cell[1..]),
        _ => false,
    };
    if risky {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// Digits, with at most one decimal point between digits: what follows a sign in a
/// number a spreadsheet reads as a number and nothing else.
fn is_plain_number(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction)
}

pub fn new_export_id() -> String {
    crate::new_id()
}

/// The report's call type code for one of ours.
pub fn report_call_type(call_type: &str) -> &'static str {
    match call_type {
        "outbound" => "user_out",
        "conference_dial_out" => "conf_out",
        _ => "ucap_in",
    }
}

struct Context {
    users: HashMap<String, (UserRow, Vec<Sku>)>,
    org_country: String,
}

impl Engine {
    fn usage_context(&self, org_id: &str) -> Result<Context> {
        self.read(|tx| {
            let org = crate::org(tx, org_id)?;
            let mut users = HashMap::new();
            for u in tx.list_users(org_id)? {
                let skus = tx.user_licenses(org_id, &u.user_id)?.iter().filter_map(|s| Sku::parse(s).ok()).collect();
                users.insert(u.user_id.clone(), (u, skus));
            }
            Ok(Context { users, org_country: org.country.clone() })
        })
    }

    fn usage_ref<'a>(&'a self, ctx: &'a Context, c: &'a CdrRow) -> UsageRef<'a> {
        let user = c.user_id.as_ref().and_then(|u| ctx.users.get(u));
        let capability = if c.funding == "emergency" {
            "MCOEV"
        } else if c.charge_minor > 0 || c.plan_minutes == 0 {
            "MCOPSTNPP"
        } else {
            match c.plan_kind.as_deref() {
                Some("conferencing") => "MCOMEETADD",
                Some("international") => "MCOPSTN2",
                _ if user.is_some_and(|(_, s)| s.contains(&Sku::CallingPlanInternational)) => "MCOPSTN2",
                _ => "MCOPSTN1",
            }
        };
        let destination_dialed = c
            .dest_country
            .as_deref()
            .and_then(|d| Country::parse(d).ok())
            .and_then(|d| self.catalog().country_info(d))
            .map(|i| i.name.as_str())
            .or(c.rate_name.as_deref())
            .unwrap_or_default();
        UsageRef {
            cdr: c,
            conference_id: if c.call_type == "conference_dial_out" { &c.call_id } else { "" },
            user_location: user.map(|(u, _)| u.usage_location.as_str()).unwrap_or(&ctx.org_country),
            upn: user.map(|(u, _)| u.upn.as_str()).unwrap_or_default(),
            user_display_name: user.map(|(u, _)| u.display_name.as_str()).unwrap_or_default(),
            call_type: report_call_type(&c.call_type),
            number_type: match c.call_type.as_str() {
                "outbound" => "user",
                "conference_dial_out" => "service",
                _ => "toll_free",
            },
            domestic_international: if c.domestic { "Domestic" } else { "International" },
            destination_dialed,
            capability,
        }
    }

    /// Hands each report row matching `filter` to `f`, oldest first, streaming, as a
    /// view of the stored call (what the exports write from, without copying).
    pub fn for_each_usage_ref(
        &self,
        org_id: &str,
        filter: &UsageFilter,
        f: &mut dyn FnMut(&UsageRef<'_>) -> Result<()>,
    ) -> Result<usize> {
        let ctx = self.usage_context(org_id)?;
        let user_id = match &filter.user {
            Some(u) => Some(
                ctx.users
                    .values()
                    .find(|(r, _)| r.user_id == *u || r.upn == u.to_ascii_lowercase())
                    .map(|(r, _)| r.user_id.clone())
                    .ok_or_else(|| err!(ErrorCode::UserNotFound, "no user '{u}' in this organization"))?,
            ),
            None => None,
        };
        let from = filter.from.unwrap_or(Timestamp::UNIX_EPOCH);
        let to = filter.to.unwrap_or(Timestamp::MAX);
        if from >= to {
            return Err(err!(ErrorCode::InvalidInput, "the period is empty: 'from' must be before 'to'"));
        }
        let country = filter.country.as_deref().map(|c| c.to_ascii_uppercase());
        let wanted = |c: &CdrRow| {
            !(user_id.as_ref().is_some_and(|u| c.user_id.as_ref() != Some(u))
                || country.as_ref().is_some_and(|k| c.dest_country.as_ref() != Some(k))
                || filter.funding.as_ref().is_some_and(|x| *x != c.funding)
                || filter
                    .call_type
                    .as_ref()
                    .is_some_and(|t| *t != c.call_type && t.as_str() != report_call_type(&c.call_type)))
        };
        let store = self.store();
        let mut n = 0;
        read_ahead(
            |lend| store.read_report(&mut |tx| tx.for_each_cdr(org_id, from, to, &mut |c| lend(c))),
            wanted,
            &mut |c| {
                let row = self.usage_ref(&ctx, c);
                if filter.capability.as_ref().is_some_and(|x| *x != row.capability) {
                    return Ok(());
                }
                n += 1;
                f(&row)
            },
        )?;
        Ok(n)
    }

    /// Hands each report row matching `filter` to `f`, oldest first, streaming.
    pub fn for_each_usage(
        &self,
        org_id: &str,
        filter: &UsageFilter,
        f: &mut dyn FnMut(&UsageRow) -> Result<()>,
    ) -> Result<usize> {
        self.for_each_usage_ref(org_id, filter, &mut |r| f(&r.to_row()))
    }

    /// One page of the report as JSON; the cursor is the last row's usage id.
    pub fn usage_page(
        &self,
        org_id: &str,
        filter: &UsageFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<UsagePage> {
        if limit == 0 || limit > crate::queries::MAX_PAGE {
            return Err(err!(ErrorCode::InvalidInput, "limit must be 1 to {}", crate::queries::MAX_PAGE));
        }
        let currency = self.org_view(org_id)?.currency;
        let mut items = Vec::new();
        let mut seen_cursor = cursor.is_none();
        let mut more = false;
        // Stop scanning once the page is full: the error below is only a signal.
        let full = err!(ErrorCode::Internal, "page full");
        let r = self.for_each_usage(org_id, filter, &mut |row| {
            if !seen_cursor {
                seen_cursor = Some(row.usage_id.as_str()) == cursor;
                return Ok(());
            }
            if items.len() == limit {
                more = true;
                return Err(full.clone());
            }
            items.push(row.clone());
            Ok(())
        });
        match r {
            Err(e) if !(more && e == full) => return Err(e),
            _ => {}
        }
        if !seen_cursor {
            return Err(err!(
                ErrorCode::InvalidInput,
                "cursor '{}' is not one this report returned",
                cursor.unwrap_or("")
            ));
        }
        let next_cursor = if more { items.last().map(|r| r.usage_id.clone()) } else { None };
        Ok(UsagePage { items, next_cursor, currency })
    }

    /// Writes the report as CSV (RFC 4180, UTF-8, header row); returns the rows written.
    /// Every cell goes through [`spreadsheet_safe`].
    pub fn write_usage_csv(&self, org_id: &str, filter: &UsageFilter, out: &mut dyn Write) -> Result<usize> {
        let io = |e: csv::Error| err!(ErrorCode::Internal, "writing the report: {e}");
        let mut w = csv::WriterBuilder::new().from_writer(out);
        w.write_record(USAGE_HEADER).map_err(io)?;
        let mut cur: Option<Currency> = None;
        // Numbers and times are formatted into these, reused for every row.
        let mut f: [String; 9] = Default::default();
        let n = self.for_each_usage_ref(org_id, filter, &mut |r| {
            let c = r.cdr;
            let money = *cur.get_or_insert_with(|| {
                Currency::parse(&c.currency).unwrap_or_else(|_| Currency::parse("USD").expect("USD"))
            });
            f.iter_mut().for_each(String::clear);
            crate::views::write_iso(&mut f[0], c.start_at);
            crate::views::write_iso(&mut f[1], c.end_at);
            money.write_minor(&mut f[2], c.connection_fee_minor);
            money.write_minor(&mut f[3], c.charge_minor);
            for (i, v) in [(4, c.duration_seconds), (5, c.plan_minutes), (6, c.charged_seconds), (7, c.overrun_seconds)]
            {
                f[i].push_str(itoa::Buffer::new().format(v));
            }
            let cells = [
                c.usage_id.as_str(),
                &c.call_id,
                r.conference_id,
                r.user_location,
                c.user_id.as_deref().unwrap_or_default(),
                r.upn,
                r.user_display_name,
                &c.from_number,
                r.call_type,
                r.number_type,
                r.domestic_international,
                r.destination_dialed,
                &c.to_number,
                &f[0],
                &f[1],
                &f[4],
                &f[2],
                &f[3],
                &c.currency,
                r.capability,
                &c.funding,
                &f[5],
                &f[6],
                &f[7],
                c.rate_per_minute.as_deref().unwrap_or_default(),
                &c.source,
            ];
            for cell in cells {
                w.write_field(spreadsheet_safe(cell).as_bytes()).map_err(io)?;
            }
            w.write_record(None::<&[u8]>).map_err(io)
        })?;
        w.flush().map_err(|e| err!(ErrorCode::Internal, "writing the report: {e}"))?;
        Ok(n)
    }

    /// Writes the original product's export bundle, `Calls.Export.<id>.zip`: the CSV
    /// (`Calls.Export.<id>.csv`) and `parameters.json` (the period, the filters, the
    /// columns, the rows written). Streams: `out` need not seek; returns the rows written.
    pub fn write_usage_zip(
        &self,
        org_id: &str,
        filter: &UsageFilter,
        export_id: &str,
        now: Timestamp,
        out: &mut dyn Write,
    ) -> Result<usize> {
        use zip::write::SimpleFileOptions;
        let z = |e: zip::result::ZipError| err!(ErrorCode::Internal, "writing the bundle: {e}");
        let org = self.org_view(org_id)?;
        let mut zw = zip::ZipWriter::new_stream(out);
        // Fast deflate, as for the workbook; zip64 so that any size fits.
        let at = jiff::tz::TimeZone::UTC.to_datetime(now);
        let stamp = zip::DateTime::from_date_and_time(
            at.year() as u16,
            at.month() as u8,
            at.day() as u8,
            at.hour() as u8,
            at.minute() as u8,
            at.second() as u8,
        )
        .unwrap_or_default();
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .last_modified_time(stamp)
            .large_file(true);
        zw.start_file(format!("Calls.Export.{export_id}.csv"), options).map_err(z)?;
        let rows = self.write_usage_csv(org_id, filter, &mut zw)?;
        zw.start_file("parameters.json", options.large_file(false)).map_err(z)?;
        let iso = |t: Option<Timestamp>| t.map(crate::views::iso);
        let parameters = serde_json::json!({
            "export_id": export_id,
            "report": "pstn_usage",
            "organization": {"id": org.id, "name": org.name},
            "from": iso(filter.from),
            "to": iso(filter.to),
            "filters": {
                "user": filter.user,
                "call_type": filter.call_type,
                "funding": filter.funding,
                "capability": filter.capability,
                "country": filter.country,
            },
            "currency": org.currency,
            "columns": USAGE_HEADER,
            "rows": rows,
            "generated_at": crate::views::iso(now),
        });
        serde_json::to_writer_pretty(&mut zw, &parameters)
            .map_err(|e| err!(ErrorCode::Internal, "writing the bundle: {e}"))?;
        zw.finish().map_err(z)?;
        Ok(rows)
    }

    /// Writes the report as an Excel workbook (constant-memory mode: typed cells, times
    /// as Excel dates, money as numbers in the currency's format, frozen header,
    /// autofilter); returns the rows written.
    pub fn write_usage_xlsx(&self, org_id: &str, filter: &UsageFilter, path: &std::path::Path) -> Result<usize> {
        use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
        let x = |e: rust_xlsxwriter::XlsxError| err!(ErrorCode::Internal, "writing the workbook: {e}");
        let currency = Currency::parse(&self.org_view(org_id)?.currency)?;
        let decimals = "0".repeat(currency.exponent() as usize);
        let money_format = if decimals.is_empty() {
            format!("#,##0 \"{}\"", currency.code())
        } else {
            format!("#,##0.{decimals} \"{}\"", currency.code())
        };
        let mut wb = Workbook::new();
        // The fastest deflate level: compression was 40% of the export's time, and the
        // file is only somewhat larger.
        wb.set_zip_compression_level(1);
        let bold = Format::new().set_bold();
        let date = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
        let money = Format::new().set_num_format(money_format);
        let ws = wb.add_worksheet_with_constant_memory().map_err(x)?;
        ws.set_name("PSTN usage").map_err(x)?;
        let widths = [
            38.0, 24.0, 14.0, 8.0, 38.0, 30.0, 22.0, 16.0, 10.0, 11.0, 14.0, 22.0, 16.0, 20.0, 20.0, 10.0, 12.0, 12.0,
            9.0, 12.0, 16.0, 8.0, 10.0, 10.0, 10.0, 9.0,
        ];
        for (i, w) in widths.iter().enumerate() {
            ws.set_column_width(i as u16, *w).map_err(x)?;
        }
        // Formats by column, not by cell: an unformatted cell takes its column's format,
        // which spares a format lookup (a hash of the whole format) per cell.
        for (col, format) in [(13, &date), (14, &date), (16, &money), (17, &money)] {
            ws.set_column_format(col, format).map_err(x)?;
        }
        ws.set_freeze_panes(1, 0).map_err(x)?;
        for (i, h) in USAGE_HEADER.iter().enumerate() {
            ws.write_string_with_format(0, i as u16, *h, &bold).map_err(x)?;
        }
        let scale = 10f64.powi(currency.exponent() as i32);
        let mut row: u32 = 0;
        let n = self.for_each_usage_ref(org_id, filter, &mut |r| {
            let c = r.cdr;
            row += 1;
            let strings: [(u16, &str); 13] = [
                (0, &c.usage_id),
                (1, &c.call_id),
                (2, r.conference_id),
                (3, r.user_location),
                (4, c.user_id.as_deref().unwrap_or_default()),
                (5, r.upn),
                (6, r.user_display_name),
                (7, &c.from_number),
                (8, r.call_type),
                (9, r.number_type),
                (10, r.domestic_international),
                (11, r.destination_dialed),
                (12, &c.to_number),
            ];
            for (col, v) in strings {
                ws.write_string(row, col, v).map_err(x)?;
            }
            let start = ExcelDateTime::from_timestamp(c.start_at.as_second()).map_err(x)?;
            let end = ExcelDateTime::from_timestamp(c.end_at.as_second()).map_err(x)?;
            ws.write_datetime(row, 13, &start).map_err(x)?;
            ws.write_datetime(row, 14, &end).map_err(x)?;
            ws.write_number(row, 15, c.duration_seconds as f64).map_err(x)?;
            // Excel stores numbers as doubles: a minor-unit amount divided by 100 is the
            // nearest double to the exact decimal, which Excel shows exactly.
            ws.write_number(row, 16, c.connection_fee_minor as f64 / scale).map_err(x)?;
            ws.write_number(row, 17, c.charge_minor as f64 / scale).map_err(x)?;
            ws.write_string(row, 18, &c.currency).map_err(x)?;
            ws.write_string(row, 19, r.capability).map_err(x)?;
            ws.write_string(row, 20, &c.funding).map_err(x)?;
            ws.write_number(row, 21, c.plan_minutes as f64).map_err(x)?;
            ws.write_number(row, 22, c.charged_seconds as f64).map_err(x)?;
            ws.write_number(row, 23, c.overrun_seconds as f64).map_err(x)?;
            ws.write_string(row, 24, c.rate_per_minute.as_deref().unwrap_or_default()).map_err(x)?;
            ws.write_string(row, 25, &c.source).map_err(x)?;
            Ok(())
        })?;
        ws.autofilter(0, 0, row.max(1), (USAGE_HEADER.len() - 1) as u16).map_err(x)?;
        wb.save(path).map_err(x)?;
        Ok(n)
    }
}

#[cfg(test)]
mod spreadsheet_safe_tests {
    use super::spreadsheet_safe;

    #[test]
    fn formulas_are_quoted_and_numbers_kept() {
        for (cell, want) in [
            ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("+", "'+"),
            ("-", "'-"),
            ("+1.", "'+1."),
            ("+14255550100", "+14255550100"),
            ("-12.50", "-12.50"),
            ("+0.5", "+0.5"),
            ("Ada Lovelace", "Ada Lovelace"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(spreadsheet_safe(cell), want, "{cell:?}");
        }
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// Rows arrive whole and in order, whatever the batch boundaries.
    #[test]
    fn hands_every_kept_row_once_in_order() {
        for total in [0u64, 1, 511, 512, 513, 5_000] {
            let mut seen = Vec::new();
            read_ahead(|lend| (0..total).try_for_each(|i| lend(&mut i.clone())), |i: &u64| i % 3 != 1, &mut |i| {
                seen.push(*i);
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, (0..total).filter(|i| i % 3 != 1).collect::<Vec<_>>(), "{total} rows");
        }
    }

    /// A writer that fails stops the reader at its next row, even when the rows that follow
    /// are all filtered out (a page of a rare country, a client that went away).
    #[test]
    fn a_failed_writer_stops_the_reader_at_its_next_row() {
        const LIMIT: u64 = 10_000_000;
        let writer_failed = AtomicBool::new(false);
        let produced = AtomicU64::new(0);
        let r = read_ahead(
            |lend| {
                for i in 0..LIMIT {
                    produced.fetch_add(1, Ordering::Relaxed);
                    // One full batch is kept, then nothing is: only the stop can end this early.
                    lend(&mut if i < READ_BATCH as u64 { 0 } else { 1 })?;
                    if !writer_failed.load(Ordering::Relaxed) && i >= READ_BATCH as u64 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                Ok(())
            },
            |v: &u64| *v == 0,
            &mut |_| {
                writer_failed.store(true, Ordering::Relaxed);
                Err(err!(ErrorCode::NotFound, "the client went away"))
            },
        );
        assert_eq!(r.unwrap_err().message, "the client went away");
        let produced = produced.into_inner();
        assert!(produced < LIMIT, "the reader went on to the end ({produced} rows) after the writer failed");
    }

    #[test]
    fn a_failed_reader_is_reported() {
        let mut seen = 0;
        let r = read_ahead(
            |lend| {
                (0..600u64).try_for_each(|i| lend(&mut i.clone()))?;
                Err(err!(ErrorCode::StoreError, "disk gone"))
            },
            |_: &u64| true,
            &mut |_| {
                seen += 1;
                Ok(())
            },
        );
        assert_eq!(r.unwrap_err().code, ErrorCode::StoreError);
        assert!(seen <= 600);
    }
}
